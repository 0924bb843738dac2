/** What the demo and the tests do with the official KeyClient beyond single calls. */
import type { KeyClient } from "@azure/keyvault-keys";

/** The id (kid) of the live key of that name, or undefined when the HSM answers 404 for it. */
export async function liveKeyId(keys: KeyClient, name: string): Promise<string | undefined> {
  try {
    return (await keys.getKey(name)).id;
  } catch (error) {
    if ((error as { statusCode?: number }).statusCode === 404) return undefined;
    throw error;
  }
}

/** Deletes a key, waits for the deletion and purges it: what must come before a selective key restore. */
export async function deleteAndPurge(keys: KeyClient, name: string, pollIntervalMs = 10): Promise<void> {
  await (await keys.beginDeleteKey(name, { intervalInMs: pollIntervalMs })).pollUntilDone();
  await keys.purgeDeletedKey(name);
}
