/** The HSM client's own view of a job, shared by the poller, the errors and the operations. */
export type Delay = (ms: number, signal?: AbortSignal) => Promise<void>;
export type OperationKind = "backup" | "restore" | "selectiveKeyRestore" | "preBackup" | "preRestore";
export type OperationStatus = "InProgress" | "Succeeded" | "Failed" | "Canceled";

export interface HsmOperationState {
  readonly kind: OperationKind;
  readonly jobId: string;
  readonly status: OperationStatus;
  readonly statusDetails?: string;
  /** Present only when the service filled it in: an all-null error object means nothing. */
  readonly error?: { readonly code?: string; readonly message?: string };
  readonly startTime?: Date;
  readonly endTime?: Date;
  /** Backup only: the folder the HSM created, once Succeeded. */
  readonly folderUri?: string;
}

/** Managed HSM job ids are hex strings (32 digits in every recording); anything else is refused at the edge. */
export const JOB_ID = /^[0-9A-Za-z]{1,64}$/;
