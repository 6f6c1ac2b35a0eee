// ULIDs: 48 bits of milliseconds and 80 random bits, in Crockford's
// base32 (26 characters). Op ids are ULIDs chosen by the client; their time
// part only orders history time ranges, never the log.

const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** Returns a new ULID for time `now` (milliseconds since the epoch). */
export function ulid(now: number = Date.now(), random: (b: Uint8Array) => void = fill): string {
  if (!Number.isInteger(now) || now < 0 || now > 2 ** 48 - 1) {
    throw new RangeError(`ulid: time ${now} is outside 0..2^48-1 milliseconds`);
  }
  const b = new Uint8Array(16);
  for (let i = 5, t = now; i >= 0; i--, t = Math.floor(t / 256)) b[i] = t % 256;
  random(b.subarray(6));
  return ulidFromBytes(b);
}

/**
 * Makes op ids as the Go SDK does (internal/opid): ULIDs whose entropy is
 * a 7-byte prefix drawn once per OpIds and a 3-byte tail. The tail of the
 * first id in a millisecond is 23 random bits; later ids in the same
 * millisecond count up from it. The ops of one client then share most of
 * their ids, which compression finds again (about 3 bytes per id on the
 * wire rather than 10), while a member who sees them still cannot guess
 * the next one to take it first. When the clock steps back to a
 * millisecond already used, or a tail fills, a new prefix is drawn: ids of
 * one OpIds never repeat and keep the clock's time.
 */
export class OpIds {
  private readonly prefix = new Uint8Array(7);
  private ms = -1;
  private tail = 0;

  constructor(private readonly random: (b: Uint8Array) => void = fill) {
    random(this.prefix);
  }

  /** Returns a new op id for time `now` (milliseconds since the epoch). */
  next(now: number): string {
    if (!Number.isInteger(now) || now < 0 || now > 2 ** 48 - 1) {
      throw new RangeError(`ulid: time ${now} is outside 0..2^48-1 milliseconds`);
    }
    if (now === this.ms && this.tail + 1 < 2 ** 24) {
      this.tail++;
    } else {
      // A millisecond used before (the clock stepped back, or the tail is
      // full) draws a new prefix, which no id made before has.
      if (now <= this.ms) this.random(this.prefix);
      this.ms = now;
      this.tail = this.randomTail();
    }
    const b = new Uint8Array(16);
    for (let i = 5, t = this.ms; i >= 0; i--, t = Math.floor(t / 256)) b[i] = t % 256;
    b.set(this.prefix, 6);
    b[13] = this.tail >>> 16;
    b[14] = (this.tail >>> 8) & 255;
    b[15] = this.tail & 255;
    return ulidFromBytes(b);
  }

  private randomTail(): number {
    const t = new Uint8Array(3);
    this.random(t);
    return ((t[0]! << 16) | (t[1]! << 8) | t[2]!) & (2 ** 23 - 1);
  }
}

/** Returns the ULID whose 16 bytes (big-endian: time, then entropy) are b. */
export function ulidFromBytes(b: Uint8Array): string {
  if (b.length !== 16) throw new RangeError(`ulid: ${b.length} bytes; a ULID has 16`);
  // 128 bits as 26 digits of 5 bits: the first digit holds 2 zero bits.
  let out = "";
  let bits = 2;
  let acc = 0;
  for (const byte of b) {
    acc = (acc << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += alphabet[(acc >> bits) & 31];
    }
    acc &= (1 << bits) - 1;
  }
  return out;
}

/** Reports whether s is a well-formed ULID. */
export function isULID(s: string): boolean {
  return /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/.test(s);
}

function fill(b: Uint8Array): void {
  globalThis.crypto.getRandomValues(b);
}
