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
