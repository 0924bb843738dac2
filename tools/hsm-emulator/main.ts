/**
 * Runs the Managed HSM emulator as a process, for running the app under Functions Core Tools:
 *
 *   node dist/tools/hsm-emulator/main.js --port 8443 [--name demohsm] [--tenant-id <guid>]
 *     [--retry-after 1] [--job-duration-ms 2000] [--enforce-rbac --admin <oid> ...] [--quiet]
 *
 * Without --name it is named loopback-<port>, as the app names an HSM at http://127.0.0.1:<port>, so
 * the catalog and the backup folders agree. It speaks plain http: the HTTPS mode with a test CA is
 * for tests and the demo, which pass clients a transport (tools/loopback-transport.ts).
 *
 * Prints the URL on the first line, then one line per request and per job transition (no secrets).
 */
import { parseArgs } from "node:util";
import { startHsmEmulator } from "./index.js";

function integer(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0)
    throw new Error(`--${name} must be a non-negative integer, got '${value}'.`);
  return parsed;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: "string" },
      name: { type: "string" },
      "tenant-id": { type: "string" },
      "retry-after": { type: "string" },
      "job-duration-ms": { type: "string" },
      "enforce-rbac": { type: "boolean" },
      admin: { type: "string", multiple: true },
      quiet: { type: "boolean" },
      help: { type: "boolean" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(
      "Usage: node dist/tools/hsm-emulator/main.js [--port N] [--name hsm] [--tenant-id guid] [--retry-after s] [--job-duration-ms ms] [--enforce-rbac] [--admin oid]... [--quiet]",
    );
    return;
  }
  const emulator = await startHsmEmulator({
    port: integer("port", values.port),
    name: values.name,
    tenantId: values["tenant-id"],
    retryAfterSeconds: integer("retry-after", values["retry-after"]),
    jobDurationMs: integer("job-duration-ms", values["job-duration-ms"]),
    enforceRbac: values["enforce-rbac"],
    initialAdminObjectIds: values.admin,
    log: values.quiet ? undefined : (line) => console.log(`${new Date().toISOString()} ${line}`),
  });
  console.log(`Managed HSM emulator '${emulator.name}' listening at ${emulator.url}`);
  const shutdown = (signal: string) => {
    console.log(`${signal} received, stopping the HSM emulator`);
    emulator.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error("Stopping the HSM emulator failed:", error);
        process.exit(1);
      },
    );
  };
  process.once("SIGINT", () => shutdown("SIGINT"));
  process.once("SIGTERM", () => shutdown("SIGTERM"));
}

main().catch((error: unknown) => {
  console.error(`HSM emulator failed to start: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
