/**
 * `npm run demo`: the whole product on this machine, with nothing from Azure. Starts Azurite, the
 * managed-identity endpoint and the Managed HSM emulator; creates keys; runs the nightly backup
 * handler; prints the catalog; deletes and purges a key; restores it through the HTTP handler; shows
 * it back; stops everything. The app runs exactly its production code: the deployable bundle
 * (`npm run build`, package.json main) registering its functions through @azure/functions-core as
 * in the host, settings from the environment, DefaultAzureCredential, the handlers Azure calls.
 */
import { readdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import functions from "@azure/functions";
import type { HttpResponseInit, Timer } from "@azure/functions";
import { startAzurite } from "./azurite.js";
import { installFunctionsCore } from "./functions-host.js";
import { startHsmEmulator } from "./hsm-emulator/index.js";
import { applyIdentityEnv, startIdentityEndpoint } from "./identity-endpoint.js";

const { HttpRequest, InvocationContext } = functions;
const KEYS = ["payments-signing", "customer-data-wrap", "audit-log-hmac"];
const LOST_KEY = "customer-data-wrap";

function step(text: string): void {
  console.log(`\n== ${text}`);
}

function context(functionName: string) {
  return new InvocationContext({
    invocationId: `demo-${functionName}`,
    functionName,
    logHandler: (level, ...args) => console.log(`   [${functionName} ${level}] ${args.map(String).join(" ")}`),
  });
}

function request(method: string, path: string, body?: unknown) {
  const url = new URL(path, "http://localhost:7071");
  const id = /\/api\/(?:backups|restores)\/([^/]+)$/.exec(url.pathname)?.[1];
  return new HttpRequest({
    method,
    url: url.href,
    ...(body !== undefined ? { body: { string: JSON.stringify(body) }, headers: { "content-type": "application/json" } } : {}),
    ...(id ? { params: { id } } : {}),
  });
}

function show(response: HttpResponseInit): any {
  const body = response.jsonBody ?? (typeof response.body === "string" ? JSON.parse(response.body) : undefined);
  console.log(`   HTTP ${response.status ?? 200}`);
  return body;
}

async function main(): Promise<void> {
  step("Starting Azurite, the managed-identity endpoint and the Managed HSM emulator");
  const azurite = await startAzurite();
  const identity = await startIdentityEndpoint();
  const hsm = await startHsmEmulator({ name: "demohsm", retryAfterSeconds: 1, jobDurationMs: 1500 });
  const stops = [() => hsm.stop(), () => identity.stop(), () => azurite.stop()];
  try {
    // Exactly what the Functions host gives the app in Azure: identity endpoint + app settings.
    applyIdentityEnv(identity.env);
    Object.assign(process.env, {
      MANAGED_HSM_URLS: hsm.url,
      BackupStorage: azurite.connectionString,
      BACKUP_CONTAINER: "mhsm-backups",
      CATALOG_TABLE: "hsmbackups",
    });
    console.log(`   Azurite blobs ${azurite.blobEndpoint}, tables ${azurite.tableEndpoint}`);
    console.log(`   Managed HSM emulator ${hsm.url}`);

    step("Loading the bundle as the Functions host does: every file package.json main names");
    const registered = await loadBundle();
    type Http = (request: InstanceType<typeof HttpRequest>, context: InstanceType<typeof InvocationContext>) => Promise<HttpResponseInit>;
    const nightlyBackup = registered("nightlyBackup") as (timer: Timer, context: InstanceType<typeof InvocationContext>) => Promise<void>;
    const listBackups = registered("listBackups") as Http;
    const postRestore = registered("postRestore") as Http;
    const getRestore = registered("getRestore") as Http;

    step(`Creating keys in the HSM: ${KEYS.join(", ")}`);
    for (const name of KEYS) hsm.keys.create(name);

    step("Running the nightly backup timer function");
    await nightlyBackup({ isPastDue: false, schedule: { adjustForDST: false }, scheduleStatus: { last: "", next: "", lastUpdated: "" } }, context("nightlyBackup"));

    step("GET /api/backups: the catalog");
    const { items } = show(await listBackups(request("GET", "/api/backups"), context("listBackups")));
    for (const b of items) console.log(`   ${b.id}  ${b.hsmName}  ${b.status}  ${b.durationSeconds}s  ${b.folderUri}`);
    const backup = items[0];
    if (!backup || backup.status !== "Succeeded") throw new Error("The demo backup did not succeed");

    step(`Disaster: key "${LOST_KEY}" is deleted and purged`);
    hsm.keys.delete(LOST_KEY);
    hsm.keys.purge(LOST_KEY);
    console.log(`   key present: ${hsm.keys.has(LOST_KEY)}`);

    step("POST /api/restores for the whole HSM: refused, the backup is less than 30 minutes old");
    const refused = show(await postRestore(request("POST", "/api/restores", { backupId: backup.id }), context("postRestore")));
    console.log(`   ${refused.title}: ${refused.detail}`);

    step(`POST /api/restores {"backupId": "${backup.id}", "keyName": "${LOST_KEY}"}`);
    const started = await postRestore(request("POST", "/api/restores", { backupId: backup.id, keyName: LOST_KEY }), context("postRestore"));
    const restore = show(started);
    console.log(`   Location: ${(started.headers as Record<string, string>).Location}  status: ${restore.status}`);
    if (started.status !== 202) throw new Error(`The restore was not accepted: ${JSON.stringify(restore)}`);

    step(`GET ${restore.statusUrl} until it ends`);
    let status = restore;
    for (let polls = 0; status.status === "Running" || status.status === "Starting"; polls++) {
      if (polls > 60) throw new Error("The demo restore did not finish within a minute");
      await new Promise((resolve) => setTimeout(resolve, 1000));
      status = show(await getRestore(request("GET", restore.statusUrl), context("getRestore")));
      console.log(`   ${status.status}${status.statusDetails ? `: ${status.statusDetails}` : ""}`);
    }
    if (status.status !== "Succeeded") throw new Error(`The demo restore ended ${status.status}: ${status.errorMessage}`);

    step(`Key "${LOST_KEY}" is back`);
    console.log(`   key present: ${hsm.keys.has(LOST_KEY)}  (${hsm.keys.get(LOST_KEY)?.key.kid})`);
    if (!hsm.keys.has(LOST_KEY)) throw new Error("The key did not come back");
    console.log("\nDemo complete.");
  } finally {
    for (const stop of stops) await stop();
  }
}

/**
 * Imports the built app's entries (package.json main) with @azure/functions-core provided as the host
 * provides it, and returns the handlers they registered, by function name.
 */
async function loadBundle(): Promise<(name: string) => unknown> {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
  const main = (JSON.parse(await readFile(join(root, "package.json"), "utf8")) as { main: string }).main;
  const dir = join(root, dirname(main));
  const core = installFunctionsCore();
  for (const file of (await readdir(dir)).filter((f) => f.endsWith(".js")).sort()) await import(pathToFileURL(join(dir, file)).href);
  console.log(`   ${main}: ${core.registrations.map((r) => `${r.name} (${r.trigger})`).join(", ")}`);
  return (name) => {
    const registration = core.registrations.find((r) => r.name === name);
    if (!registration) throw new Error(`The bundle registered no function ${name}`);
    return registration.handler;
  };
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(`\nDemo failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`);
    process.exit(1);
  },
);
