/**
 * The deployable bundle (`npm run build`, tools/build.ts), checked the way the Functions host uses it:
 * a fresh node process provides @azure/functions-core, imports every file package.json `main`
 * names, and calls a registered handler. Outside the host @azure/functions only warns and registers
 * nothing, so the registrations are observed at the module the host injects (tools/functions-host.ts).
 */
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { buildBundle, type BundleResult } from "../../tools/build.js";
import { runProbe, type ProbeResult } from "../../tools/registration-probe.js";
import { uniqueName } from "../support/app.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** What must not load before a function is invoked. */
const HEAVY =
  /node_modules\/@azure\/(identity|msal-[a-z]+|storage-blob|data-tables|keyvault-common|core-rest-pipeline|core-lro)\/|src\/lib\/(deps|storage|catalog|backup|restore|reconcile|prune|outcome|hsm\/)/;

describe("the function app bundle", () => {
  let out: string;
  let bundle: BundleResult;
  let entries: string[];
  let probe: string;

  beforeAll(async () => {
    out = await mkdtemp(join(tmpdir(), "app-bundle-"));
    bundle = await buildBundle(join(out, "dist"));
    // package.json main, resolved in the temporary tree: the files the host would load.
    const main = (JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { main: string }).main;
    expect(main).toMatch(/^dist\/app\/functions\/\*\.js$/);
    const dir = join(out, dirname(main));
    entries = (await readdir(dir))
      .filter((f) => f.endsWith(".js"))
      .sort()
      .map((f) => join(dir, f));
    probe = join(out, "probe.js");
    await build({
      entryPoints: [join(ROOT, "tools/registration-probe.ts")],
      outfile: probe,
      bundle: true,
      platform: "node",
      format: "esm",
      logLevel: "warning",
    });
  }, 120_000);

  afterAll(async () => {
    if (out) await rm(out, { recursive: true, force: true });
  });

  it("has one entry per function file, and every app.http/app.timer in src/functions registers through @azure/functions-core", async () => {
    expect(entries.map((e) => e.slice(e.lastIndexOf("/") + 1))).toEqual(
      bundle.functionEntries.map((e) => e.slice(e.lastIndexOf("/") + 1)),
    );
    const expected: Array<{ name: string; trigger: string }> = [];
    for (const file of (await readdir(join(ROOT, "src/functions"))).filter((f) => f.endsWith(".ts"))) {
      const source = await readFile(join(ROOT, "src/functions", file), "utf8");
      for (const m of source.matchAll(/\bapp\.(http|timer)\(\s*"([^"]+)"/g))
        expected.push({ name: m[2]!, trigger: `${m[1]}Trigger` });
    }
    expect(expected.length).toBeGreaterThanOrEqual(6);
    const result = await probeRun(entries, {});
    const byName = (a: { name: string }, b: { name: string }) => a.name.localeCompare(b.name);
    expect(result.registrations.sort(byName)).toEqual(expected.sort(byName));
  });

  it("loads no HSM, storage or identity code at registration: those are in chunks imported on first use", () => {
    const outputs = bundle.metafile.outputs;
    const key = (abs: string) => Object.keys(outputs).find((k) => join(ROOT, k) === abs || k === abs);
    const loaded = new Set<string>();
    const visit = (output: string) => {
      if (loaded.has(output)) return;
      loaded.add(output);
      for (const i of outputs[output]!.imports) if (i.kind === "import-statement" && !i.external) visit(i.path);
    };
    for (const entry of bundle.functionEntries) visit(key(entry) ?? entry);
    const atRegistration = [...loaded].flatMap((o) => Object.keys(outputs[o]!.inputs));
    expect(atRegistration.some((i) => i.includes("node_modules/@azure/functions/"))).toBe(true);
    expect(atRegistration.filter((i) => HEAVY.test(i))).toEqual([]);
    const lazily = Object.values(outputs).flatMap((o) => Object.keys(o.inputs));
    expect(
      lazily.some((i) => HEAVY.test(i)),
      "the heavy modules are in the bundle, just not loaded at registration",
    ).toBe(true);
  });

  it("answers a first call through the registered handler against Azurite", async () => {
    const result = await probeRun([...entries, "--call", "health", "/api/health"], {
      MANAGED_HSM_URLS: "https://bundlehsm.managedhsm.azure.net",
      BackupStorage: inject("azuriteConnectionString"),
      BACKUP_CONTAINER: uniqueName("bundle"),
      CATALOG_TABLE: uniqueName("bundle"),
    });
    expect(result.call?.status, result.call?.body).toBe(503);
    expect(JSON.parse(result.call!.body.split("\n")[0]!)).toMatchObject({
      status: "stale",
      hsms: [{ name: "bundlehsm", stale: true }],
    });
  });

  function probeRun(args: string[], env: Record<string, string>): Promise<ProbeResult> {
    return runProbe(probe, args, { ...process.env, ...env });
  }
});
