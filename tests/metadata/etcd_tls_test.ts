/**
 * The etcd driver over TLS with client certificates, as the original's --etcd-cert-file,
 * --etcd-key-file and --etcd-ca-file: a throwaway CA signs etcd's and the client's certificates
 * (openssl); etcd demands a client certificate. Without one, or trusting the wrong CA, the open
 * fails with `unavailable`.
 * @module
 */

import assert from "node:assert/strict";
import { isTorusError } from "../../src/core/mod.ts";
import { openEtcdKv } from "../../src/metadata/mod.ts";
import { hasCommand } from "../support/packages.ts";
import { EtcdProcess } from "../support/etcd.ts";

const ready = hasCommand("etcd") && hasCommand("openssl");
const skip = ready ? "" : " (skipped: etcd or openssl is not installed)";
const encoder = new TextEncoder();

async function openssl(dir: string, args: string[]): Promise<void> {
  const output = await new Deno.Command("openssl", { args, cwd: dir, stderr: "piped" }).output();
  if (!output.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(output.stderr)}`);
  }
}

/** A CA and a certificate it signed, for `name` with the given usage and SANs. */
async function makeCa(dir: string, name: string): Promise<void> {
  await openssl(dir, [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.crt`,
    "-subj",
    `/CN=${name}`,
    "-days",
    "1",
  ]);
}

async function makeCert(
  dir: string,
  ca: string,
  name: string,
  usage: string,
  san = "IP:127.0.0.1,DNS:localhost",
): Promise<void> {
  await openssl(dir, [
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    `/CN=${name}`,
  ]);
  await Deno.writeTextFile(
    `${dir}/${name}.ext`,
    `subjectAltName=${san}\nextendedKeyUsage=${usage}\n`,
  );
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${ca}.crt`,
    "-CAkey",
    `${ca}.key`,
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "1",
    "-extfile",
    `${name}.ext`,
  ]);
}

Deno.test({
  name: "etcd TLS: client certificates work; no client certificate, the wrong CA or a " +
    `certificate not naming the endpoint is unavailable${skip}`,
  ignore: !ready,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "torus-tls-" });
    try {
      await makeCa(dir, "ca");
      await makeCa(dir, "rogue-ca");
      await makeCert(dir, "ca", "server", "serverAuth,clientAuth");
      await makeCert(dir, "ca", "client", "clientAuth");
      await makeCert(dir, "ca", "misnamed", "serverAuth", "DNS:elsewhere.example");
      await using etcd = await EtcdProcess.start({
        tls: {
          certFile: `${dir}/server.crt`,
          keyFile: `${dir}/server.key`,
          caFile: `${dir}/ca.crt`,
        },
      });
      const tls = {
        certFile: `${dir}/client.crt`,
        keyFile: `${dir}/client.key`,
        caFile: `${dir}/ca.crt`,
      };
      for (const endpoint of [etcd.endpoint, `https://${etcd.endpoint}`]) {
        const kv = await openEtcdKv({ endpoints: [endpoint], ...tls });
        try {
          await kv.put("tls/k", encoder.encode(endpoint));
          assert.equal(new TextDecoder().decode((await kv.get("tls/k"))!.value), endpoint);
        } finally {
          await kv.close();
        }
      }
      const unavailable = (e: unknown) => isTorusError(e, "unavailable");
      await assert.rejects(
        openEtcdKv({ endpoints: [etcd.endpoint], caFile: tls.caFile, connectTimeoutMs: 2_000 }),
        unavailable,
      );
      await assert.rejects(
        openEtcdKv({
          endpoints: [etcd.endpoint],
          ...tls,
          caFile: `${dir}/rogue-ca.crt`,
          connectTimeoutMs: 2_000,
        }),
        unavailable,
      );
      await etcd.kill();
      // A certificate from the right CA that does not name the endpoint is refused too.
      await using misnamed = await EtcdProcess.start({
        tls: {
          certFile: `${dir}/misnamed.crt`,
          keyFile: `${dir}/misnamed.key`,
          caFile: `${dir}/ca.crt`,
        },
      });
      await assert.rejects(
        openEtcdKv({ endpoints: [misnamed.endpoint], ...tls, connectTimeoutMs: 2_000 }),
        (e) => unavailable(e) && /names none of 127\.0\.0\.1/.test((e as Error).message),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
