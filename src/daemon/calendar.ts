// Calendar events in the form of systemd's OnCalendar= (systemd.time(7)),
// the subset admins write: "hourly", "daily", "Mon..Fri 02:00",
// "*-*-* *:00/15:00", "*:0/5", "Sat,Sun 04:30:00", "*-*-01 00:00".
//   [WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:MINUTE[:SECOND]]
// Each field: *, a value, a list (a,b), a range (a..b) or a repetition
// (a/step, *\/step). Local time, like systemd without a time zone suffix.

export interface Calendar {
  text: string;
  /** The first event strictly after `afterMs`, or null when there is none in the next 10 years. */
  next(afterMs: number): number | null;
}

type Match = (v: number) => boolean;

const SHORTCUTS: Record<string, string> = {
  minutely: '*-*-* *:*:00',
  hourly: '*-*-* *:00:00',
  daily: '*-*-* 00:00:00',
  weekly: 'Mon *-*-* 00:00:00',
  monthly: '*-*-01 00:00:00',
  quarterly: '*-01,04,07,10-01 00:00:00',
  yearly: '*-01-01 00:00:00',
  annually: '*-01-01 00:00:00',
};

const WEEKDAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

export class CalendarError extends Error {}

function weekday(name: string, text: string): number {
  const i = WEEKDAYS.indexOf(name.toLowerCase().slice(0, 3));
  if (i < 0 || !/^[a-z]+$/i.test(name)) throw new CalendarError(`"${text}": "${name}" is not a weekday (Mon, Tue, ... Sun)`);
  return i;
}

function weekdays(field: string, text: string): Match {
  const days = new Set<number>();
  for (const part of field.split(',')) {
    const [a, b] = part.split('..');
    const from = weekday(a, text);
    const to = b === undefined ? from : weekday(b, text);
    for (let d = from; ; d = (d + 1) % 7) {
      days.add(d);
      if (d === to) break;
    }
  }
  return (d) => days.has(d);
}

function number(s: string, min: number, max: number, what: string, text: string): number {
  if (!/^\d+$/.test(s)) throw new CalendarError(`"${text}": ${what} "${s}" is not a number`);
  const n = Number(s);
  if (n < min || n > max) throw new CalendarError(`"${text}": ${what} ${n} is outside ${min}..${max}`);
  return n;
}

/** One numeric field: *, n, a,b, a..b, a/step, *\/step. */
function field(spec: string, min: number, max: number, what: string, text: string): Match {
  const parts = spec.split(',').map((part): Match => {
    const [base, stepText] = part.split('/');
    const step = stepText === undefined ? 0 : number(stepText, 1, max, `${what} step`, text);
    if (base === '*') return step ? (v) => (v - min) % step === 0 : () => true;
    const [a, b] = base.split('..');
    const from = number(a, min, max, what, text);
    const to = b === undefined ? (step ? max : from) : number(b, min, max, what, text);
    if (to < from) throw new CalendarError(`"${text}": ${what} range ${base} is empty`);
    return (v) => v >= from && v <= to && (step === 0 || (v - from) % step === 0);
  });
  return (v) => parts.some((m) => m(v));
}

export function parseCalendar(input: string): Calendar {
  const text = input.trim();
  const spec = SHORTCUTS[text.toLowerCase()] ?? text;
  const words = spec.split(/\s+/).filter(Boolean);
  if (words.length === 0 || words.length > 3) throw new CalendarError(`"${input}": expected [weekdays] [date] [time], e.g. "Mon..Fri 02:00" or "hourly"`);
  let dow: Match = () => true;
  if (/^[a-z]/i.test(words[0])) dow = weekdays(words.shift()!, input);
  let date = '*-*-*';
  let time = '00:00:00';
  for (const w of words) {
    if (w.includes('-')) date = w;
    else if (w.includes(':')) time = w;
    else throw new CalendarError(`"${input}": "${w}" is neither a date (Y-M-D) nor a time (H:M[:S])`);
  }
  const d = date.split('-');
  if (d.length === 2) d.unshift('*');
  if (d.length !== 3) throw new CalendarError(`"${input}": date "${date}" is not YEAR-MONTH-DAY or MONTH-DAY`);
  const t = time.split(':');
  if (t.length === 2) t.push('00');
  if (t.length !== 3) throw new CalendarError(`"${input}": time "${time}" is not HOUR:MINUTE[:SECOND]`);
  const year = field(d[0], 1970, 2200, 'year', input);
  const month = field(d[1], 1, 12, 'month', input);
  const day = field(d[2], 1, 31, 'day', input);
  const hour = field(t[0], 0, 23, 'hour', input);
  const minute = field(t[1], 0, 59, 'minute', input);
  const second = field(t[2], 0, 59, 'second', input);

  const next = (afterMs: number): number | null => {
    const after = new Date(afterMs);
    const cursor = new Date(after.getFullYear(), after.getMonth(), after.getDate());
    for (let i = 0; i < 3660; i++, cursor.setDate(cursor.getDate() + 1)) {
      if (!year(cursor.getFullYear()) || !month(cursor.getMonth() + 1) || !day(cursor.getDate()) || !dow(cursor.getDay())) continue;
      for (let h = 0; h < 24; h++) {
        if (!hour(h)) continue;
        for (let m = 0; m < 60; m++) {
          if (!minute(m)) continue;
          for (let s = 0; s < 60; s++) {
            if (!second(s)) continue;
            const at = new Date(cursor.getFullYear(), cursor.getMonth(), cursor.getDate(), h, m, s).getTime();
            if (at > afterMs) return at;
          }
        }
      }
    }
    return null;
  };
  // An expression that never fires is a mistake worth reporting at load time.
  if (next(Date.now()) === null) throw new CalendarError(`"${input}": never happens in the next 10 years`);
  return { text: input, next };
}
