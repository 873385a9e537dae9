import assert from "node:assert/strict";
import { renderDescriptorModule } from "../../scripts/gen_proto.ts";

Deno.test("descriptor.gen.ts is what gen_proto.ts renders from proto/ now", async () => {
  const root = new URL("../../", import.meta.url);
  const current = await Deno.readTextFile(new URL("src/models/descriptor.gen.ts", root));
  assert.ok(
    current === renderDescriptorModule(root),
    "src/models/descriptor.gen.ts is stale: run `deno task proto`",
  );
});
