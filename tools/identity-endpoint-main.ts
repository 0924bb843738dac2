import { parseArgs } from "node:util";
import { startIdentityEndpoint } from "./identity-endpoint.js";

/**
 * Runs the local managed identity endpoint until interrupted and prints the two settings the Functions
 * host would set in Azure. Put them into local.settings.json "Values" (Core Tools passes Values to the
 * worker as environment variables) or export them before starting the app.
 *
 *   npx tsc -p . && node dist/tools/identity-endpoint-main.js [--port 8081] [--identity-header S]
 *     [--tenant-id GUID] [--principal-id GUID] [--client-id GUID]
 *
 * Use a fixed --port and --identity-header when the values live in a settings file.
 */
const { values } = parseArgs({
  options: {
    port: { type: "string" },
    "identity-header": { type: "string" },
    "tenant-id": { type: "string" },
    "principal-id": { type: "string" },
    "client-id": { type: "string" },
  },
  strict: true,
});

const port = values.port === undefined ? undefined : Number(values.port);
if (port !== undefined && !(Number.isInteger(port) && port >= 0 && port <= 65535)) {
  throw new Error(`--port must be an integer 0-65535, got ${JSON.stringify(values.port)}`);
}

const endpoint = await startIdentityEndpoint({
  port,
  identityHeader: values["identity-header"],
  tenantId: values["tenant-id"],
  principalId: values["principal-id"],
  clientId: values["client-id"],
});

process.stdout.write(
  `IDENTITY_ENDPOINT=${endpoint.env.IDENTITY_ENDPOINT}\nIDENTITY_HEADER=${endpoint.env.IDENTITY_HEADER}\n`,
);
process.stderr.write(`tokens have tid=${endpoint.tenantId} oid=${endpoint.principalId}; Ctrl+C stops\n`);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    void endpoint.stop().then(() => process.exit(0));
  });
}
