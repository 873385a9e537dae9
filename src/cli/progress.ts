/**
 * Progress of long operations (dump, load): a bar on stderr when it is a terminal (cli-progress
 * draws it); otherwise nothing, or with `--progress` one line per tenth done, so pipes and logs
 * get a few lines and the summary the command prints, never terminal escapes.
 * @module
 */

import cliProgress from "cli-progress";
import { formatSize } from "../core/mod.ts";

/** Reports how far an operation got. */
export interface Progress {
  update(doneBytes: number, totalBytes: number): void;
  /** Removes the bar (the command then prints its summary). */
  stop(): void;
}

/** How a {@link progressReporter} shows itself. */
export interface ProgressOptions {
  /** Whether stderr is a terminal: a bar is drawn. */
  readonly terminal: boolean;
  /** Without a terminal, whether to write a line per tenth done (`--progress`). */
  readonly lines: boolean;
  /** Where lines go (stderr). */
  write(text: string): void;
}

/** A bar on a terminal, lines when asked for, else silence. */
export function progressReporter(label: string, options: ProgressOptions): Progress {
  if (options.terminal) return progressBar(label);
  if (options.lines) return progressLines(label, options.write);
  return { update() {}, stop() {} };
}

function describe(doneBytes: number, totalBytes: number): string {
  return `${formatSize(doneBytes)} of ${formatSize(totalBytes)}`;
}

function percentOf(doneBytes: number, totalBytes: number): number {
  return totalBytes <= 0 ? 100 : Math.floor((doneBytes / totalBytes) * 100);
}

function progressLines(label: string, write: (text: string) => void): Progress {
  let lastTenth = -1;
  return {
    update(doneBytes, totalBytes) {
      const percent = percentOf(doneBytes, totalBytes);
      const tenth = Math.floor(percent / 10);
      if (tenth === lastTenth) return;
      lastTenth = tenth;
      write(`${label}: ${percent}% (${describe(doneBytes, totalBytes)})\n`);
    },
    stop() {},
  };
}

function progressBar(label: string): Progress {
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    format: `${label} [{bar}] {percentage}% {doneText}`,
    hideCursor: true,
    clearOnComplete: true,
    fps: 5,
  }, cliProgress.Presets.shades_classic);
  let started = false;
  return {
    update(doneBytes, totalBytes) {
      const payload = { doneText: describe(doneBytes, totalBytes) };
      if (!started) {
        bar.start(Math.max(1, totalBytes), doneBytes, payload);
        started = true;
      } else {
        bar.setTotal(Math.max(1, totalBytes));
        bar.update(doneBytes, payload);
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
