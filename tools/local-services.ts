/**
 * `npm run local`: the local stand-ins for Azure on the fixed ports local.settings.sample.json names,
 * for running the app under Functions Core Tools (`func start`) in another terminal. Ctrl+C stops all.
 */
import { readFileSync } from "node:fs";
import { startAzurite } from "./azurite.js";
import { startHsmEmulator } from "./hsm-emulator/index.js";
import { startIdentityEndpoint } from "./identity-endpoint.js";

const sample = JSON.parse(readFileSync(new URL("../../local.settings.sample.json", import.meta.url), "utf8")) as {
  Values: Record<string, string>;
};
const identityUrl = new URL(sample.Values.IDENTITY_ENDPOINT!);
const hsmUrl = new URL(sample.Values.MANAGED_HSM_URLS!);

const azurite = await startAzurite({ ports: { blob: 10000, queue: 10001, table: 10002 } });
const identity = await startIdentityEndpoint({
  port: Number(identityUrl.port),
  identityHeader: sample.Values.IDENTITY_HEADER!,
});
// No name: the emulator takes the one the app gives an HSM at this URL (loopback-8443), so the
// catalog and the backup folders agree.
const hsm = await startHsmEmulator({ port: Number(hsmUrl.port), retryAfterSeconds: 2, jobDurationMs: 5000 });
hsm.keys.create("local-demo-key");

console.log(`Azurite          ${azurite.blobEndpoint} (blobs), ${azurite.tableEndpoint} (tables)`);
console.log(`Identity         ${identity.env.IDENTITY_ENDPOINT}`);
console.log(`Managed HSM      ${hsm.url} (emulator '${hsm.name}', one key: local-demo-key)`);
console.log("Ready. In another terminal: cp local.settings.sample.json local.settings.json && npm start");

const stop = async () => {
  await Promise.allSettled([hsm.stop(), identity.stop(), azurite.stop()]);
  process.exit(0);
};
// A signal handler's promise has nobody to hand it to; stop() ends the process either way.
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
