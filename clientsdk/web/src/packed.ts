// Packed op batches (Hello.packed_ops): the server sends a run of one
// conversation's ops field by field (ferry.v1.PackedBatch) rather than as
// rows. Uncompressed, as browsers receive Connect streams, a catch-up of
// chat text takes about 0.6 of the bytes of rows: ids are binary with time
// steps, authors are listed once, dots are steps. unpackBatch turns a packed
// batch back into the rows a client reading rows would have received,
// checking every list first, like the Go SDK (internal/wire.UnpackBatch).

import { create } from "@bufbuild/protobuf";

import {
  CreateSchema,
  DeleteSchema,
  EditSchema,
  MemberAddSchema,
  MemberRemoveSchema,
  MemberRoleSchema,
  MessageSchema,
  OpBatchSchema,
  OpKind,
  OpSchema,
  ReactionSchema,
  Role,
  SetTitleSchema,
  type Op,
  type OpBatch,
  type PackedBatch,
} from "./gen/ferry/v1/op_pb.js";
import { isULID, ulidFromBytes } from "./ulid.js";

const idTimeBytes = 6;
const idEntropyBytes = 10;
const maxIdTime = 2n ** 48n - 1n;

/** A packed batch that does not hold together: the server sent it wrong. */
export class MalformedBatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MalformedBatchError";
  }
}

// The zero id stands for none, as the server writes it in rows.
const zeroId = "0".repeat(26);
const orEmpty = (id: string) => (id === zeroId ? "" : id);

const hasBody = (k: OpKind) => k === OpKind.MESSAGE || k === OpKind.EDIT;
const hasTarget = (k: OpKind) => k === OpKind.EDIT || k === OpKind.DELETE || k === OpKind.REACTION_ADD || k === OpKind.REACTION_REMOVE;
const hasMember = (k: OpKind) => k === OpKind.MEMBER_ADD || k === OpKind.MEMBER_REMOVE || k === OpKind.MEMBER_ROLE;
const hasRole = (k: OpKind) => k === OpKind.MEMBER_ADD || k === OpKind.MEMBER_ROLE;
const hasText = (k: OpKind) => k === OpKind.CREATE || k === OpKind.SET_TITLE || k === OpKind.REACTION_ADD || k === OpKind.REACTION_REMOVE;

/**
 * Unpacks a packed batch into rows. field names the batch in error
 * messages, e.g. "ops.packed[2]". Throws MalformedBatchError, naming the
 * field, when a list is short, long or out of range. An op of a kind this
 * version does not know (a newer server's) comes without a payload.
 */
export function unpackBatch(p: PackedBatch, field = "packed"): OpBatch {
  const bad = (msg: string) => new MalformedBatchError(`${field}${msg}`);
  // As the Go SDK: any case in, the canonical upper case out.
  const conversationId = p.conversationId.toUpperCase();
  if (!isULID(conversationId)) throw bad(`.conversation_id ${JSON.stringify(p.conversationId)} is not a ULID`);
  const n = p.kinds.length;
  const batch = create(OpBatchSchema, { conversationId });
  if (n === 0) return batch;
  if (p.firstSeq === 0n || p.firstSeq > 2n ** 64n - 1n - BigInt(n)) throw bad(`.first_seq ${p.firstSeq} does not start ${n} ops`);
  for (const [name, len] of [["authors", p.authors.length], ["dot_steps", p.dotSteps.length], ["time_steps", p.timeSteps.length]] as const) {
    if (len !== n) throw bad(`.${name} has ${len} entries for ${n} ops`);
  }
  if (p.idEntropy.length !== n * idEntropyBytes) {
    throw bad(`.id_entropy has ${p.idEntropy.length} bytes; want ${n * idEntropyBytes} (${idEntropyBytes} per op)`);
  }
  if (p.authorDevices.length !== p.authorUsers.length) {
    throw bad(` has ${p.authorDevices.length} author devices and ${p.authorUsers.length} author users`);
  }
  if (p.authorDevices.length > n) throw bad(` has ${p.authorDevices.length} authors for ${n} ops`);
  const devices: string[] = [];
  const users: string[] = [];
  const seen = new Map<string, number>();
  p.authorDevices.forEach((d, i) => {
    const u = p.authorUsers[i]!; // as many users as devices, checked above
    if (d.length !== 16 || u.length !== 16) throw bad(`: author ${i} is not two 16-byte ids`);
    const device = ulidFromBytes(d);
    const j = seen.get(device);
    if (j !== undefined) throw bad(`: authors ${j} and ${i} are the same device`);
    seen.set(device, i);
    devices.push(device);
    users.push(ulidFromBytes(u));
  });
  for (let k = 1; k < p.erased.length; k++) {
    if (p.erased[k]! <= p.erased[k - 1]!) throw bad(".erased is not ascending");
  }
  const erased = new Set(p.erased);
  const lastErased = p.erased.at(-1);
  if (lastErased !== undefined && lastErased >= n) throw bad(`.erased names op ${lastErased} of ${n}`);

  let texts = 0;
  let bodies = 0;
  let bodyAt = 0; // where in bodyData the next body starts
  let targets = 0;
  let members = 0;
  let roles = 0;
  const takeId = (b: Uint8Array, at: number, name: string, i: number): string => {
    if (b.length < (at + 1) * 16) throw bad(`.${name} ends before op ${i}`);
    return ulidFromBytes(b.subarray(at * 16, (at + 1) * 16));
  };
  const lastDot = devices.map(() => 0n);
  const id = new Uint8Array(16);
  let t = 0n;
  const ops: Op[] = [];
  for (let i = 0; i < n; i++) {
    // The per-op lists have n entries each, checked above.
    const a = p.authors[i]!;
    if (a >= devices.length) throw bad(`.authors[${i}] is ${a}; there are ${devices.length} authors`);
    const step = p.dotSteps[i]!;
    const dot = lastDot[a]! + step;
    if (step === 0n || dot > 2n ** 64n - 1n) throw bad(`.dot_steps[${i}] is ${step}: dots of an author rise`);
    lastDot[a] = dot;
    t += p.timeSteps[i]!;
    if (t < 0n || t > maxIdTime) throw bad(`.time_steps[${i}] takes the id time out of range`);
    let tt = t;
    for (let k = idTimeBytes - 1; k >= 0; k--) {
      id[k] = Number(tt & 0xffn);
      tt >>= 8n;
    }
    id.set(p.idEntropy.subarray(i * idEntropyBytes, (i + 1) * idEntropyBytes), idTimeBytes);
    const kind = p.kinds[i]!;
    if (kind === OpKind.UNSPECIFIED) throw bad(`.kinds[${i}] is unspecified`);
    const op = create(OpSchema, {
      id: ulidFromBytes(id),
      seq: p.firstSeq + BigInt(i),
      deviceId: orEmpty(devices[a]!),
      dot,
      userId: orEmpty(users[a]!),
      erased: erased.has(i),
    });
    let text = "";
    if (hasText(kind)) {
      const next = p.texts[texts++];
      if (next === undefined) throw bad(`.texts ends before op ${i}`);
      text = next;
    }
    let body: Uint8Array = new Uint8Array(0);
    let contentType = "";
    if (hasBody(kind)) {
      const size = p.bodySizes[bodies];
      const ct = p.contentTypes[bodies];
      if (size === undefined || ct === undefined) throw bad(`.body_sizes or content_types ends before op ${i}`);
      if (size > p.bodyData.length - bodyAt) throw bad(`.body_data ends inside body ${bodies}`);
      body = p.bodyData.subarray(bodyAt, bodyAt + size);
      bodyAt += size;
      bodies++;
      contentType = ct;
    }
    const targetId = hasTarget(kind) ? orEmpty(takeId(p.targets, targets++, "targets", i)) : "";
    const userId = hasMember(kind) ? takeId(p.members, members++, "members", i) : "";
    let role = Role.UNSPECIFIED;
    if (hasRole(kind)) {
      const r = p.roles[roles++];
      if (r === undefined) throw bad(`.roles ends before op ${i}`);
      role = r;
      if (!Number.isInteger(role) || role < Role.UNSPECIFIED || role > Role.OWNER) throw bad(`.roles[${roles - 1}]: unknown role ${role}`);
    }
    switch (kind) {
      case OpKind.CREATE:
        op.payload = { case: "create", value: create(CreateSchema, { title: text }) };
        break;
      case OpKind.MESSAGE:
        op.payload = { case: "message", value: create(MessageSchema, { body, contentType }) };
        break;
      case OpKind.EDIT:
        op.payload = { case: "edit", value: create(EditSchema, { targetId, body, contentType }) };
        break;
      case OpKind.DELETE:
        op.payload = { case: "delete", value: create(DeleteSchema, { targetId }) };
        break;
      case OpKind.REACTION_ADD:
        op.payload = { case: "reactionAdd", value: create(ReactionSchema, { targetId, key: text }) };
        break;
      case OpKind.REACTION_REMOVE:
        op.payload = { case: "reactionRemove", value: create(ReactionSchema, { targetId, key: text }) };
        break;
      case OpKind.MEMBER_ADD:
        op.payload = { case: "memberAdd", value: create(MemberAddSchema, { userId, role }) };
        break;
      case OpKind.MEMBER_REMOVE:
        op.payload = { case: "memberRemove", value: create(MemberRemoveSchema, { userId }) };
        break;
      case OpKind.MEMBER_ROLE:
        op.payload = { case: "memberRole", value: create(MemberRoleSchema, { userId, role }) };
        break;
      case OpKind.SET_TITLE:
        op.payload = { case: "setTitle", value: create(SetTitleSchema, { title: text }) };
        break;
      default:
        // A newer server's kind: its payload lies in fields this version
        // does not know (PackedBatch says so), and took none of the ones
        // above. The op is kept without a payload: it fills its seq and
        // its author's dot, and shows nothing.
        break;
    }
    ops.push(op);
  }
  if (texts !== p.texts.length) throw bad(`.texts has ${p.texts.length} entries; the ops need ${texts}`);
  if (bodies !== p.bodySizes.length || bodies !== p.contentTypes.length) {
    throw bad(` has ${p.bodySizes.length} body sizes and ${p.contentTypes.length} content types; the ops need ${bodies}`);
  }
  if (bodyAt !== p.bodyData.length) throw bad(`.body_data has ${p.bodyData.length - bodyAt} bytes after the last body`);
  if (targets * 16 !== p.targets.length) throw bad(`.targets has ${p.targets.length} bytes; the ops need ${targets * 16}`);
  if (members * 16 !== p.members.length) throw bad(`.members has ${p.members.length} bytes; the ops need ${members * 16}`);
  if (roles !== p.roles.length) throw bad(`.roles has ${p.roles.length} entries; the ops need ${roles}`);
  batch.ops = ops;
  return batch;
}
