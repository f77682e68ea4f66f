// Validates Kubernetes documents against Istio's CRD schemas, using the compiled (ajv)
// validators of the npm package @kubernetes-models/istio, which are generated from Istio's
// CRDs (see its package.json: crd-all.gen.yaml of Istio 1.29.2).
//
//   node validate.mjs DOCS.json
//
// DOCS.json: [{"source": "istio-manifests/ingress/x.yaml#1", "document": {...}}, ...]
// (the Rust test parses the YAML and hands over JSON, so no YAML parser is needed here).
//
// Prints one line per document and exits 0 if every document is valid, 1 if any is not
// (or has a kind this script cannot validate), 2 on a usage or installation problem.
//
// What these validators do NOT check (the CRD features ajv cannot express): the
// x-kubernetes-validations CEL rules (e.g. the url scheme, targetRef kinds) and unknown
// fields (a structural CRD prunes them; `kubectl apply` rejects them with strict field
// validation). tests/tests/manifests.rs checks those itself.

import { readFileSync } from "node:fs";

const models = {
  "extensions.istio.io/v1alpha1/WasmPlugin": async () =>
    (await import("@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin")).WasmPlugin,
};

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: node validate.mjs DOCS.json");
    return 2;
  }
  let docs;
  try {
    docs = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    console.error(`cannot read ${file}: ${e.message}`);
    return 2;
  }
  let failed = 0;
  for (const { source, document } of docs) {
    const key = `${document?.apiVersion}/${document?.kind}`;
    const load = models[key];
    if (!load) {
      console.log(`INVALID ${source}: no validator for ${key}`);
      failed++;
      continue;
    }
    let Model;
    try {
      Model = await load();
    } catch (e) {
      console.error(`cannot load the validator for ${key} (run \`just manifest-validator\`): ${e.message}`);
      return 2;
    }
    try {
      new Model(document).validate();
      console.log(`ok ${source} (${key})`);
    } catch (e) {
      failed++;
      const details = (e.errors ?? []).map((d) => `\n    ${d.instancePath || "/"}: ${d.message ?? d.keyword} ${JSON.stringify(d.params ?? {})}`);
      console.log(`INVALID ${source}: ${e.message}${details.join("")}`);
    }
  }
  console.log(`${docs.length - failed} valid, ${failed} invalid`);
  return failed === 0 ? 0 : 1;
}

process.exitCode = await main();
