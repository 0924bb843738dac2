/**
 * `npm run demo`: the whole product on this machine, with nothing from Azure. Starts Azurite, the
 * managed-identity endpoint and the Managed HSM emulator; creates keys; runs the nightly backup
 * handler; prints the catalog; deletes and purges a key; restores it through the HTTP handler; shows
 * it back; stops everything. The app runs exactly its production code: settings from the
 * environment, DefaultAzureCredential, the same handlers Azure calls.
 */
import functions from "@azure/functions";
import type { HttpResponseInit } from "@azure/functions";
import { startAzurite } from "./azurite.js";
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

    // Imported only now: the handlers read settings lazily, but this keeps the order obvious. The
    // handler modules, not src/functions/ (which only registers them with the host).
    const { nightlyBackup } = await import("../src/handlers/nightlyBackup.js");
    const { listBackups } = await import("../src/handlers/backups.js");
    const { postRestore, getRestore } = await import("../src/handlers/restores.js");

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

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(`\nDemo failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`);
    process.exit(1);
  },
);
