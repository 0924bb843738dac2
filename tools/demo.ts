/**
 * `npm run demo`: the whole product on this machine, with nothing from Azure. Starts Azurite, the
 * managed-identity endpoint and the Managed HSM emulator; creates keys; runs the nightly backup
 * handler; prints the catalog; deletes and purges a key; restores it through the HTTP handler; shows
 * it back; stops everything. The app runs exactly its production code: settings from the
 * environment, DefaultAzureCredential, the same handlers Azure calls, and it reaches the HSM as in
 * Azure, at https://demohsm.managedhsm.azure.net with the challenge-resource check on. The one thing
 * passed in is the transport that connects that name to the emulator's loopback port and trusts the
 * demo's throwaway CA. Keys are handled with the official KeyClient, as an operator would.
 */
import { readdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import functions from "@azure/functions";
import type { HttpResponseInit } from "@azure/functions";
import { DefaultAzureCredential } from "@azure/identity";
import { KeyClient } from "@azure/keyvault-keys";
import { parseConfig } from "../src/lib/config.js";
import { createDeps } from "../src/lib/deps.js";
import { startAzurite } from "./azurite.js";
import { startHsmEmulator } from "./hsm-emulator/index.js";
import { applyIdentityEnv, startIdentityEndpoint } from "./identity-endpoint.js";
import { deleteAndPurge, liveKeyId } from "./key-client.js";
import { HSM_DOMAIN, hsmRealNames } from "./loopback-transport.js";
import { runProbe } from "./registration-probe.js";
import { createTestCa } from "./tls.js";

const { HttpRequest, InvocationContext } = functions;
const KEYS = ["payments-signing", "customer-data-wrap", "audit-log-hmac"];
const LOST_KEY = "customer-data-wrap";

type Print = (line: string) => void;

function context(print: Print, functionName: string) {
  return new InvocationContext({
    invocationId: `demo-${functionName}`,
    functionName,
    logHandler: (level, ...args) => print(`   [${functionName} ${level}] ${args.map(String).join(" ")}`),
  });
}

function request(method: string, path: string, body?: unknown) {
  const url = new URL(path, "http://localhost:7071");
  const id = /\/api\/(?:backups|restores)\/([^/]+)$/.exec(url.pathname)?.[1];
  return new HttpRequest({
    method,
    url: url.href,
    ...(body !== undefined
      ? { body: { string: JSON.stringify(body) }, headers: { "content-type": "application/json" } }
      : {}),
    ...(id ? { params: { id } } : {}),
  });
}

/**
 * Runs the demo, printing each line through `print`. Everything it starts is stopped, and every
 * environment variable it sets is put back, before it returns or throws, so a test can run it too.
 */
export async function runDemo(print: Print = console.log): Promise<void> {
  const step = (text: string) => print(`\n== ${text}`);
  const show = (response: HttpResponseInit): any => {
    print(`   HTTP ${response.status ?? 200}`);
    return response.jsonBody ?? (typeof response.body === "string" ? JSON.parse(response.body) : undefined);
  };
  step("Starting Azurite, the managed-identity endpoint and the Managed HSM emulator");
  const azurite = await startAzurite();
  const identity = await startIdentityEndpoint();
  const demoCa = createTestCa([`*.${HSM_DOMAIN}`]);
  const hsm = await startHsmEmulator({
    name: "demohsm",
    tls: { cert: demoCa.cert, key: demoCa.key },
    retryAfterSeconds: 1,
    jobDurationMs: 1500,
  });
  const {
    urls: [hsmUrl = ""],
    transport,
  } = hsmRealNames([hsm], demoCa.ca);
  const settings: Record<string, string> = {
    MANAGED_HSM_URLS: hsmUrl,
    BackupStorage: azurite.connectionString,
    BACKUP_CONTAINER: "mhsm-backups",
    CATALOG_TABLE: "hsmbackups",
  };
  const saved = Object.keys(settings).map((name) => [name, process.env[name]] as const);
  const restoreSettings = () => {
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  };
  const restoreIdentity = applyIdentityEnv(identity.env);
  const stops: (() => unknown)[] = [
    restoreSettings,
    restoreIdentity,
    () => transport.close(),
    () => hsm.stop(),
    () => identity.stop(),
    () => azurite.stop(),
  ];
  try {
    // Exactly what the Functions host gives the app in Azure: identity endpoint + app settings.
    Object.assign(process.env, settings);
    print(`   Azurite blobs ${azurite.blobEndpoint}, tables ${azurite.tableEndpoint}`);
    print(`   Managed HSM emulator ${hsmUrl} (listening at ${hsm.url}, certificate from a throwaway CA)`);
    const deps = createDeps(parseConfig(process.env), { hsmClientOptions: { httpClient: transport } });
    const keys = new KeyClient(hsmUrl, new DefaultAzureCredential(), { httpClient: transport });

    // Imported only now: the handlers read settings lazily, but this keeps the order obvious. The
    // handler modules, not src/functions/ (which only registers them with the host).
    const { nightlyBackup } = await import("../src/handlers/nightlyBackup.js");
    const { listBackups } = await import("../src/handlers/backups.js");
    const { postRestore, getRestore } = await import("../src/handlers/restores.js");

    step(`Creating keys in the HSM: ${KEYS.join(", ")}`);
    for (const name of KEYS) print(`   ${(await keys.createRsaKey(name, { hsm: true })).id}`);

    step("Running the nightly backup timer function");
    await nightlyBackup(
      { isPastDue: false, schedule: { adjustForDST: false }, scheduleStatus: { last: "", next: "", lastUpdated: "" } },
      context(print, "nightlyBackup"),
      deps,
    );

    step("GET /api/backups: the catalog");
    const { items } = show(await listBackups(request("GET", "/api/backups"), context(print, "listBackups"), deps));
    for (const b of items) print(`   ${b.id}  ${b.hsmName}  ${b.status}  ${b.durationSeconds}s  ${b.folderUri}`);
    const backup = items[0];
    if (!backup || backup.status !== "Succeeded") throw new Error("The demo backup did not succeed");

    step(`Verified restorable: the HSM's own pre-restore check ran against the new folder right after the backup`);
    print(
      `   verification: ${backup.verification ?? "none"}${backup.verifiedAt ? ` at ${backup.verifiedAt}` : ""}${backup.verificationMessage ? ` (${backup.verificationMessage})` : ""}`,
    );
    step("GET /api/backups?verification=Passed: only backups the HSM has accepted for a restore");
    const verified = show(
      await listBackups(request("GET", "/api/backups?verification=Passed"), context(print, "listBackups"), deps),
    );
    for (const b of verified.items) print(`   ${b.id}  ${b.hsmName}  verification ${b.verification}`);
    if (backup.verification !== "Passed") throw new Error("The demo backup was not verified restorable");

    step(`Disaster: key "${LOST_KEY}" is deleted and purged`);
    await deleteAndPurge(keys, LOST_KEY, 200);
    print(`   key present: ${(await liveKeyId(keys, LOST_KEY)) !== undefined}`);

    step("POST /api/restores for the whole HSM without confirming it: refused, nothing started");
    const unconfirmed = show(
      await postRestore(request("POST", "/api/restores", { backupId: backup.id }), context(print, "postRestore"), deps),
    );
    print(`   ${unconfirmed.title}: ${unconfirmed.detail}`);

    step(
      `POST /api/restores {"backupId": "${backup.id}", "confirm": "${backup.hsmName}"}: refused, the backup is less than 30 minutes old`,
    );
    const refused = show(
      await postRestore(
        request("POST", "/api/restores", { backupId: backup.id, confirm: backup.hsmName }),
        context(print, "postRestore"),
        deps,
      ),
    );
    print(`   ${refused.title}: ${refused.detail}`);

    step(`POST /api/restores {"backupId": "${backup.id}", "keyName": "${LOST_KEY}"}`);
    const started = await postRestore(
      request("POST", "/api/restores", { backupId: backup.id, keyName: LOST_KEY }),
      context(print, "postRestore"),
      deps,
    );
    const restore = show(started);
    print(`   Location: ${(started.headers as Record<string, string>).Location}  status: ${restore.status}`);
    if (started.status !== 202) throw new Error(`The restore was not accepted: ${JSON.stringify(restore)}`);

    step(`GET ${restore.statusUrl} until it ends`);
    let status = restore;
    for (let polls = 0; status.status === "Running" || status.status === "Starting"; polls++) {
      if (polls > 60) throw new Error("The demo restore did not finish within a minute");
      await new Promise((resolve) => setTimeout(resolve, 1000));
      status = show(await getRestore(request("GET", restore.statusUrl), context(print, "getRestore"), deps));
      print(`   ${status.status}${status.statusDetails ? `: ${status.statusDetails}` : ""}`);
    }
    if (status.status !== "Succeeded")
      throw new Error(`The demo restore ended ${status.status}: ${status.errorMessage}`);

    step(`Key "${LOST_KEY}" is back`);
    const kid = await liveKeyId(keys, LOST_KEY);
    print(`   key present: ${kid !== undefined}  (${kid})`);
    if (kid === undefined) throw new Error("The key did not come back");
    print("\nDemo complete.");
  } finally {
    for (const stop of stops) await stop();
  }
}

/**
 * `npm run demo` first loads the deployable bundle (package.json main) in a fresh process the way the
 * Functions host does and shows what registers; the steps above then run the handlers from the
 * compiled sources, because they are handed the HSM transport, which the bundle's handlers (built
 * from the app settings alone) have no way to receive.
 */
async function showBundle(print: Print = console.log): Promise<void> {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
  const main = (JSON.parse(await readFile(join(root, "package.json"), "utf8")) as { main: string }).main;
  const dir = join(root, dirname(main));
  const entries = (await readdir(dir))
    .filter((f) => f.endsWith(".js"))
    .sort()
    .map((f) => join(dir, f));
  const result = await runProbe(join(root, "dist", "tools", "registration-probe.js"), entries, process.env);
  print(`\n== The deployable bundle, loaded as the Functions host loads it: ${main}`);
  print(
    `   ${result.registrations.map((r) => `${r.name} (${r.trigger})`).join(", ")}; registered in ${result.importMs.toFixed(0)} ms`,
  );
  if (result.registrations.length === 0) throw new Error(`The bundle ${main} registered no function`);
}

// `npm run demo` runs this file; a test imports runDemo instead.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  showBundle()
    .then(() => runDemo())
    .then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(`\nDemo failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
        process.exit(1);
      },
    );
}
