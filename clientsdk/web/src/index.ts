// @ferrysync/web: a Ferry device for web applications.
export { FerryClient, type ClientEvent, type ClientOptions, type ConversationView, type HeldConversation, type MemberView, type MessagePage, type Role, type State, type Status } from "./client.js";
export { fold, type MessageView, type SendStatus } from "./fold.js";
export { MemoryReplica, type Replica, type Session } from "./replica.js";
export { IndexedDBReplica, ReplicaInUseError, ReplicaLostError } from "./idb.js";
export { ulid, isULID, ulidFromBytes, OpIds } from "./ulid.js";
export { unpackBatch, MalformedBatchError } from "./packed.js";
