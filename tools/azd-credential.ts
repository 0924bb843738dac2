/**
 * The sign-in of an azd hook: azd's own first (the hook runs inside `azd up`), then whatever
 * DefaultAzureCredential finds (the Azure CLI, environment variables, workload identity in a
 * pipeline, managed identity). Any tenant is allowed, for HSMs or apps in another tenant than azd's.
 */
import type { TokenCredential } from "@azure/core-auth";

export async function azdHookCredential(tenantId?: string): Promise<TokenCredential> {
  // Imported here so that tests of the hooks' other exports do not load the whole identity stack.
  const { AzureDeveloperCliCredential, ChainedTokenCredential, DefaultAzureCredential } =
    await import("@azure/identity");
  const options = { ...(tenantId ? { tenantId } : {}), additionallyAllowedTenants: ["*"] };
  return new ChainedTokenCredential(new AzureDeveloperCliCredential(options), new DefaultAzureCredential(options));
}
