// Every error a user can see: a stable code and the exit status the CLI maps it to.
export const ExitStatus = {
  ok: 0,
  failure: 1,
  usage: 2,
  refused: 3,
  notUsable: 4,
} as const;

export type ExitStatusValue = (typeof ExitStatus)[keyof typeof ExitStatus];

export class DpsrError extends Error {
  constructor(message: string, readonly code: string, readonly exitStatus: ExitStatusValue = ExitStatus.failure) {
    super(message);
    this.name = 'DpsrError';
  }
}

/** Unsafe or unsuitable device, missing privilege or kernel support: nothing was changed. */
export class RefusedError extends DpsrError {
  constructor(message: string, code: string) {
    super(message, code, ExitStatus.refused);
    this.name = 'RefusedError';
  }
}

export class UsageError extends DpsrError {
  constructor(message: string) {
    super(message, 'EUSAGE', ExitStatus.usage);
    this.name = 'UsageError';
  }
}
