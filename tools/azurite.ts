import { spawn, type ChildProcess } from "node:child_process";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";

/** The well-known Azurite account; its key is public and documented, not a secret. */
export const AZURITE_ACCOUNT = "devstoreaccount1";
export const AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

export interface AzuriteOptions {
  /** HTTPS with OAuth ("basic"): needed for user-delegation SAS. Paths to a PEM cert and key. */
  readonly https?: { readonly certPath: string; readonly keyPath: string };
  /** Fixed ports (e.g. the defaults 10000-10002 that UseDevelopmentStorage=true expects); default: free ones. */
  readonly ports?: { readonly blob: number; readonly queue: number; readonly table: number };
  /** Milliseconds to wait for all three services to listen. */
  readonly startTimeoutMs?: number;
  /**
   * Keep the data in this folder (Azurite's LokiJS files) instead of in memory, e.g. to start on data
   * written there beforehand; Azurite saves it when stopped.
   */
  readonly location?: string;
}

export interface Azurite {
  readonly blobEndpoint: string;
  readonly tableEndpoint: string;
  /** Shared-key connection string for this instance (empty when started with OAuth: use identity). */
  readonly connectionString: string;
  stop(): Promise<void>;
}

/**
 * Starts Azurite as a child process on free loopback ports, in memory, and resolves once blob, queue
 * and table all listen. Ports are read from Azurite's own "listening at" lines, so parallel
 * instances never collide.
 */
export async function startAzurite(options: AzuriteOptions = {}): Promise<Azurite> {
  const require = createRequire(import.meta.url);
  const entry = require.resolve("azurite/dist/src/azurite.js");
  const args = [
    entry,
    "--silent",
    ...(options.location ? ["--location", options.location] : ["--inMemoryPersistence", "--extentMemoryLimit", "256"]),
    // storage-blob 12.32 sends an x-ms-version newer than Azurite 3.35 knows.
    "--skipApiVersionCheck",
    // Without it Azurite tries to reach the internet.
    "--disableTelemetry",
    // No --location: Azurite 3.35 refuses it together with --inMemoryPersistence.
    "--blobPort",
    String(options.ports?.blob ?? 0),
    "--queuePort",
    String(options.ports?.queue ?? 0),
    "--tablePort",
    String(options.ports?.table ?? 0),
  ];
  if (options.https) {
    args.push("--oauth", "basic", "--cert", options.https.certPath, "--key", options.https.keyPath);
  }
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], cwd: tmpdir() });
  const scheme = options.https ? "https" : "http";
  let ports: { blob?: string; queue?: string; table?: string };
  try {
    ports = await waitForPorts(child, options.startTimeoutMs ?? 20_000);
  } catch (error) {
    child.kill();
    throw error;
  }
  const blobEndpoint = `${scheme}://127.0.0.1:${ports.blob}/${AZURITE_ACCOUNT}`;
  const tableEndpoint = `${scheme}://127.0.0.1:${ports.table}/${AZURITE_ACCOUNT}`;
  const connectionString = [
    `DefaultEndpointsProtocol=${scheme}`,
    `AccountName=${AZURITE_ACCOUNT}`,
    `AccountKey=${AZURITE_KEY}`,
    `BlobEndpoint=${blobEndpoint}`,
    `TableEndpoint=${tableEndpoint}`,
  ].join(";");
  return {
    blobEndpoint,
    tableEndpoint,
    connectionString,
    stop: () => stopChild(child),
  };
}

function waitForPorts(
  child: ChildProcess,
  timeoutMs: number,
): Promise<{ blob?: string; queue?: string; table?: string }> {
  return new Promise((resolve, reject) => {
    const ports: Record<string, string> = {};
    let output = "";
    const timer = setTimeout(
      () => fail(new Error(`Azurite did not start within ${timeoutMs} ms. Output:\n${output}`)),
      timeoutMs,
    );
    const fail = (error: Error) => {
      clearTimeout(timer);
      reject(error);
    };
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      for (const match of output.matchAll(
        /Azurite (Blob|Queue|Table) service is successfully listening at https?:\/\/[^:]+:(\d+)/g,
      )) {
        ports[match[1]!.toLowerCase()] = match[2]!;
      }
      if (ports.blob && ports.queue && ports.table) {
        clearTimeout(timer);
        child.stdout?.off("data", onData);
        resolve(ports);
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.once("exit", (code) =>
      fail(new Error(`Azurite exited with code ${code} before it listened. Output:\n${output}`)),
    );
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => child.kill("SIGKILL"), 5_000);
    child.once("exit", () => {
      clearTimeout(force);
      resolve();
    });
    child.kill("SIGTERM");
  });
}
