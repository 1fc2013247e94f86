// Worker half of launcher_watch.ts: polls the npm wrapper from its own thread (the trainer's CPU steps
// would starve a timer on the main thread) and sends this process SIGTERM once the wrapper is gone.

import { hasExited, type ProcessId } from "./launcher_watch.ts";

const POLL_MS = 200;

const scope = self as unknown as { onmessage: ((e: MessageEvent<ProcessId>) => void) | null };
scope.onmessage = (e) => {
  const wrapper = e.data;
  const timer = setInterval(() => {
    if (!hasExited(wrapper)) return;
    clearInterval(timer);
    try {
      Deno.kill(Deno.pid, "SIGTERM");
    } catch {
      // no --allow-run: the run goes on, as it would have without the watch
    }
  }, POLL_MS);
};
