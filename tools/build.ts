/**
 * `npm run build` (after tsc): the deployable app as an esbuild bundle.
 *
 * - dist/app/functions/<name>.js: one small ESM entry per file in src/functions, so package.json
 *   `main` (a glob) still discovers every function and no import list is kept by hand. What the
 *   entries share, and what their handlers import on first use, goes to dist/app/chunks: a worker
 *   loads the registration code only; storage, identity and the HSM client arrive with the first
 *   invocation that needs them (issue 9).
 * - dist/cli/hsm-backup.js: the CLI as one file (it uses everything at once, so there is nothing to split).
 *
 * @azure/functions is bundled (it is CommonJS; esbuild wraps it), but `@azure/functions-core` stays
 * external: the Functions host provides that module to `require` at run time, and the banner gives
 * the ESM output a real `require` to reach it. Source maps are written beside the code for stack
 * traces in Application Insights.
 */
import { readdirSync, rmSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build, type BuildOptions, type Metafile } from "esbuild";

/** The repository root, whichever of tools/ (vitest) or dist/tools/ (node) this file runs from. */
function repoRoot(): string {
  const here = fileURLToPath(new URL(".", import.meta.url));
  return here.replace(/[\\/]dist[\\/]tools[\\/]?$/, "").replace(/[\\/]tools[\\/]?$/, "");
}

export interface BundleResult {
  /** The function entries, absolute paths, one per src/functions file. */
  readonly functionEntries: string[];
  readonly cliEntry: string;
  /** esbuild's account of which source module ended up in which output file. */
  readonly metafile: Metafile;
}

const COMMON: BuildOptions = {
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node22",
  minify: true,
  // Error names and class names stay readable in logs (several errors are told apart by name).
  keepNames: true,
  sourcemap: "linked",
  sourcesContent: false,
  external: ["@azure/functions-core"],
  // ESM output has no `require`; bundled CommonJS (@azure/functions) needs one to reach the host's module.
  banner: {
    js: 'import{createRequire as __bundleRequire}from"node:module";const require=__bundleRequire(import.meta.url);',
  },
  logLevel: "warning",
  metafile: true,
};

/** Builds the function app and the CLI into `outDir` (default dist/ of the repository). */
export async function buildBundle(outDir = join(repoRoot(), "dist")): Promise<BundleResult> {
  const root = repoRoot();
  const functionsDir = join(root, "src", "functions");
  const sources = readdirSync(functionsDir)
    .filter((f) => f.endsWith(".ts"))
    .sort()
    .map((f) => join(functionsDir, f));
  const appDir = join(outDir, "app");
  const cliDir = join(outDir, "cli");
  rmSync(appDir, { recursive: true, force: true });
  rmSync(cliDir, { recursive: true, force: true });
  const app = await build({
    ...COMMON,
    absWorkingDir: root,
    entryPoints: sources,
    outbase: join(root, "src"),
    outdir: appDir,
    splitting: true,
    chunkNames: "chunks/[name]-[hash]",
  });
  const cli = await build({
    ...COMMON,
    absWorkingDir: root,
    entryPoints: [join(root, "src", "cli", "hsm-backup.ts")],
    outfile: join(cliDir, "hsm-backup.js"),
  });
  return {
    functionEntries: sources.map((s) => join(appDir, "functions", relative(functionsDir, s).replace(/\.ts$/, ".js"))),
    cliEntry: join(cliDir, "hsm-backup.js"),
    metafile: {
      inputs: { ...app.metafile!.inputs, ...cli.metafile!.inputs },
      outputs: { ...app.metafile!.outputs, ...cli.metafile!.outputs },
    },
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const result = await buildBundle();
  const root = repoRoot();
  for (const entry of [...result.functionEntries, result.cliEntry]) console.log(`bundle: ${relative(root, entry)}`);
}
