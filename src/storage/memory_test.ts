/** Runs the BlockStore contract against MemoryBlockStore. */

import { MemoryBlockStore } from "./memory.ts";
import { blockStoreContract } from "./storage_contract.ts";

blockStoreContract(
  "MemoryBlockStore",
  () =>
    Promise.resolve({
      store: new MemoryBlockStore({ blockSizeBytes: 4096, totalBlocks: 16 }),
      cleanup: () => Promise.resolve(),
    }),
  { callsSettleAtOnce: "every call of the memory store settles when it is made" },
);
