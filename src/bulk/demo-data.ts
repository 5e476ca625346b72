/**
 * Realistic demo data: users in several time zones who talk in sessions of a few records each, mostly in their
 * daytime hours and on weekdays, with a long-tailed talk time, device habits (headset, laptop, phone) that decide
 * microphone and speaker use, and a per-user mood that tilts the sentiment mix (some records without a sentiment).
 *
 * Deterministic: the same seed, users, days and end time give the same records, event ids included, so seeding twice
 * stores nothing the second time.
 */
import type { MetricRecordInput } from '../services/validation.js';

export interface DemoOptions {
  users: number;
  days: number;
  /** Any text; equal seeds give equal data. */
  seed: string;
  /** Unix seconds; records fall in [end - days, end). */
  end: number;
}

/** sfc32, seeded through a string hash: small, fast, and good enough for demo data (not for secrets). */
export function createRandom(seed: string): () => number {
  let h = 1779033703 ^ seed.length;
  for (let i = 0; i < seed.length; i++) {
    h = Math.imul(h ^ seed.charCodeAt(i), 3432918353);
    h = (h << 13) | (h >>> 19);
  }
  const next32 = () => {
    h = Math.imul(h ^ (h >>> 16), 2246822507);
    h = Math.imul(h ^ (h >>> 13), 3266489909);
    h ^= h >>> 16;
    return h >>> 0;
  };
  let a = next32();
  let b = next32();
  let c = next32();
  let d = next32();
  const random = () => {
    a |= 0;
    b |= 0;
    c |= 0;
    d |= 0;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 12; i++) random();
  return random;
}

function pick<T>(random: () => number, items: readonly (readonly [T, number])[]): T {
  const total = items.reduce((sum, [, w]) => sum + w, 0);
  let r = random() * total;
  for (const [item, weight] of items) {
    r -= weight;
    if (r < 0) return item;
  }
  return (items.at(-1) as readonly [T, number])[0];
}

function normal(random: () => number): number {
  const u = 1 - random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
}

function poisson(random: () => number, mean: number): number {
  const limit = Math.exp(-mean);
  let k = 0;
  let p = random();
  while (p > limit) {
    k++;
    p *= random();
  }
  return k;
}

/** UTC offsets in hours, weighted by how many users live there. */
export const ZONES = [
  [-8, 0.14],
  [-5, 0.22],
  [-3, 0.06],
  [0, 0.12],
  [1, 0.16],
  [3, 0.05],
  [5.5, 0.1],
  [8, 0.09],
  [9, 0.06],
] as const;

/** Relative activity by local hour (0..23): quiet nights, a morning peak, a dip at lunch, a long afternoon. */
export const DIURNAL = [
  0.15, 0.08, 0.05, 0.05, 0.06, 0.2, 0.6, 1.6, 3.6, 5.6, 6.4, 6.0, 4.4, 5.2, 6.0, 5.8, 5.0, 3.6, 2.6, 2.2, 1.8, 1.2,
  0.7, 0.35,
];
const HOURS = DIURNAL.map((weight, hour) => [hour, weight] as const);

/** Device habits: [microphone rate, speaker rate] (a headset's user hears through it, not a speaker), weighted. */
const DEVICES: readonly (readonly [readonly [number, number], number])[] = [
  [[0.97, 0.08], 0.35], // headset
  [[0.9, 0.85], 0.4], // laptop
  [[0.95, 0.45], 0.25], // phone
];

export interface DemoUser {
  userId: string;
  /** UTC offset in hours. */
  zone: number;
  /** Sessions on an average weekday. */
  sessionsPerDay: number;
  microphoneRate: number;
  speakerRate: number;
  /** Weights of positive, neutral, negative. */
  mood: readonly [number, number, number];
}

export function makeUsers(random: () => number, count: number): DemoUser[] {
  const width = String(count).length;
  return Array.from({ length: count }, (_, i) => {
    const [microphoneRate, speakerRate] = pick(random, DEVICES);
    const tilt = normal(random) * 0.12;
    return {
      userId: `user-${String(i + 1).padStart(Math.max(4, width), '0')}`,
      zone: pick(random, ZONES),
      // Most users are light users; a few talk all day.
      sessionsPerDay: Math.min(12, 1.2 * Math.exp(0.7 * normal(random))),
      microphoneRate,
      speakerRate,
      mood: [Math.max(0.05, 0.45 + tilt), 0.3, Math.max(0.03, 0.15 - tilt / 2)],
    };
  });
}

const SENTIMENTS = ['positive', 'neutral', 'negative'] as const;

/** `bits` random bits as hex digits, zero-padded. */
function randomHex(random: () => number, bits: number): string {
  return Math.floor(random() * 2 ** bits)
    .toString(16)
    .padStart(bits / 4, '0');
}

/** A sentiment drawn with the user's mood as the weights. */
function pickSentiment(random: () => number, user: DemoUser): (typeof SENTIMENTS)[number] {
  return pick(
    random,
    SENTIMENTS.map((name, i) => [name, user.mood[i] as number] as const),
  );
}

/**
 * The records of one local day of every user, in time order per session. `day` counts from 0 (the oldest day).
 * Records outside [end - days, end) are left out (a zone shifts a local day across the window's edges).
 */
export function* demoDay(
  options: DemoOptions,
  users: readonly DemoUser[],
  random: () => number,
  day: number,
): Generator<MetricRecordInput> {
  const start = options.end - options.days * 86_400;
  const dayStart = Math.floor(start / 86_400) * 86_400 + day * 86_400;
  for (const [u, user] of users.entries()) {
    const utcMidnight = dayStart - user.zone * 3600;
    const weekday = new Date((utcMidnight + 12 * 3600) * 1000).getUTCDay();
    const weekend = weekday === 0 || weekday === 6;
    const sessions = poisson(random, user.sessionsPerDay * (weekend ? 0.35 : 1));
    for (let s = 0; s < sessions; s++) {
      const hour = pick(random, HOURS);
      let t = Math.floor(utcMidnight + hour * 3600 + random() * 3600);
      const sessionId = `sess-${randomHex(random, 32)}${randomHex(random, 16)}`;
      const usesMicrophone = random() < user.microphoneRate;
      const usesSpeaker = random() < user.speakerRate;
      // Sessions have a few records each: 1 + geometric, mean about 3.
      let records = 1;
      while (records < 12 && random() < 0.62) records++;
      for (let r = 0; r < records; r++) {
        // Talk time per record: log-normal around 45 s, a long tail of long calls, some silent records.
        const silent = random() < 0.04;
        const talkedTime = silent ? 0 : Math.min(86_400, Math.max(1, Math.round(45 * Math.exp(1.1 * normal(random)))));
        const sentimentMissing = silent || random() < 0.08;
        const sentiment = sentimentMissing ? null : pickSentiment(random, user);
        if (t >= start && t < options.end) {
          yield {
            eventId: `seed-${options.seed}-${u + 1}-${day}-${s}-${r}`,
            userId: user.userId,
            sessionId,
            timestamp: t,
            talkedTime,
            // A record now and then switches device mid-session.
            microphoneUsed: random() < 0.97 ? usesMicrophone : !usesMicrophone,
            speakerUsed: random() < 0.97 ? usesSpeaker : !usesSpeaker,
            voiceSentiment: sentiment,
          };
        }
        t += talkedTime + 20 + Math.floor(random() * 300);
      }
    }
  }
}

/** Days the generator walks: the window's days plus one, since zones shift local days across its edges. */
export function demoDayCount(options: DemoOptions): number {
  return options.days + 1;
}
