/**
 * Starts the local stand-ins for Azure once for the whole run: Azurite (blobs + tables) and the
 * managed-identity endpoint that DefaultAzureCredential finds through IDENTITY_ENDPOINT, exactly as
 * it does in Azure. Test files start their own HSM emulators, so each can inject its own faults.
 */
import type { TestProject } from "vitest/node";
import { startAzurite } from "../../tools/azurite.js";
import { applyIdentityEnv, startIdentityEndpoint } from "../../tools/identity-endpoint.js";

declare module "vitest" {
  export interface ProvidedContext {
    azuriteConnectionString: string;
    azuriteBlobEndpoint: string;
    identityPrincipalId: string;
  }
}

export default async function setup(project: TestProject) {
  const azurite = await startAzurite();
  const identity = await startIdentityEndpoint();
  // Test workers start after this returns and inherit these, so the app's credential code runs
  // unchanged against the local endpoint; variables that would steer @azure/identity elsewhere are removed.
  const restoreEnv = applyIdentityEnv(identity.env);
  project.provide("azuriteConnectionString", azurite.connectionString);
  project.provide("azuriteBlobEndpoint", azurite.blobEndpoint);
  project.provide("identityPrincipalId", identity.principalId);
  return async () => {
    restoreEnv();
    await identity.stop();
    await azurite.stop();
  };
}
