/** Watching tokens without touching the code that uses them: a credential and a transport that take notes. */
import type { AccessToken, GetTokenOptions, TokenCredential } from "@azure/core-auth";
import type { HttpClient } from "@azure/core-rest-pipeline";
import { DefaultAzureCredential } from "@azure/identity";

export const HSM_SCOPE = "https://managedhsm.azure.net/.default";
export const STORAGE_SCOPE = "https://storage.azure.com/.default";

/** The app's credential, noting for each token it hands out the scopes it was asked for. */
export function scopeRecordingCredential(real: TokenCredential = new DefaultAzureCredential()) {
  const issued = new Map<string, string>();
  const credential: TokenCredential = {
    async getToken(scopes: string | string[], options?: GetTokenOptions): Promise<AccessToken | null> {
      const token = await real.getToken(scopes, options);
      if (token) issued.set(token.token, [scopes].flat().join(" "));
      return token;
    },
  };
  return { credential, issued };
}

/** An HttpClient in front of another that notes the bearer token of every request it passes on. */
export function bearerRecording(inner: HttpClient) {
  const bearers: (string | undefined)[] = [];
  const client: HttpClient = {
    sendRequest(request) {
      bearers.push(/^Bearer (.+)$/.exec(request.headers.get("authorization") ?? "")?.[1]);
      return inner.sendRequest(request);
    },
  };
  return { client, bearers };
}
