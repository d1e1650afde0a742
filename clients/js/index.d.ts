// Type declarations of @trm-live/client (index.js).

/** The package version, equal to the repository's VERSION file. */
export const VERSION: string;

/** A position as the server sends it (contract v1). */
export interface Position {
  device_id: string;
  event_id: string;
  /** Fix time, RFC 3339 UTC with milliseconds. */
  ts: string;
  lat: number;
  lon: number;
  alt?: number;
  /** km/h */
  speed?: number;
  heading?: number;
  sats?: number;
  attrs?: Record<string, unknown>;
}

export const CloseCodes: Readonly<{
  GOING_AWAY: 1001;
  POLICY_VIOLATION: 1008;
  MESSAGE_TOO_BIG: 1009;
  TRY_AGAIN_LATER: 1013;
  UNAUTHORIZED: 4401;
}>;

export type ErrorCode =
  | "bad_request"
  | "forbidden"
  | "not_found"
  | "too_many_subscriptions"
  | "unavailable"
  | "disconnected";

export const ErrorCodes: Readonly<{
  BAD_REQUEST: "bad_request";
  FORBIDDEN: "forbidden";
  NOT_FOUND: "not_found";
  TOO_MANY_SUBSCRIPTIONS: "too_many_subscriptions";
  UNAVAILABLE: "unavailable";
  DISCONNECTED: "disconnected";
}>;

export type State = "connecting" | "open" | "closed" | "unauthorized" | "unavailable";

export const States: Readonly<{
  CONNECTING: "connecting";
  OPEN: "open";
  CLOSED: "closed";
  UNAUTHORIZED: "unauthorized";
  UNAVAILABLE: "unavailable";
}>;

export interface BackoffOptions {
  /** ms, cap of the first retry's delay (500) */
  initial?: number;
  /** ms, no delay is longer (30000) */
  max?: number;
  /** growth per attempt (2) */
  multiplier?: number;
  /** ms a connection must stay open before the attempt count resets (10000) */
  stable?: number;
  /** ms, after close 1013 the delay is at least this (5000) */
  unavailableInitial?: number;
  /** ms, and at most this (60000) */
  unavailableMax?: number;
}

export const DEFAULT_BACKOFF: Readonly<Required<BackoffOptions>>;

/** Replay speed: fix-time seconds per wall-clock second (0.1 to 1000), or "max". */
export type Speed = number | "max";

/** Options of a live subscription, passed to the server as given. */
export interface SubscribeOptions {
  /** At most this many positions per device per second. */
  max_hz?: number;
  /** Only these devices, in the snapshot and live. */
  devices?: string[];
}

export interface ReplayOptions extends SubscribeOptions {
  /** Start (fix time): a Date or an RFC 3339 string. Required. */
  from: Date | string;
  /** End (fix time); omitted or "live": rewind, then turn into the live subscription. */
  to?: Date | string | "live";
  /** 1 when omitted. */
  speed?: Speed;
}

/** Where a replay stands, as the server last said. */
export interface ReplayStatus {
  from?: string;
  to?: string;
  speed?: Speed;
  state?: "playing" | "paused";
  at?: string;
  wall?: string;
}

/** A server frame answering a replay control. */
export interface ReplayStateFrame extends ReplayStatus {
  type: "replay_state";
  topic: string;
  id?: string;
  replay: true;
  action: "pause" | "resume" | "seek" | "speed";
  snapshot?: Position[];
}

/** An error frame of the server, or the client's own "disconnected". */
export interface LiveError extends Error {
  code: ErrorCode | string;
  topic?: string;
  id?: string;
  replay?: boolean;
  /** The error frame as received, when it came from the server. */
  frame?: Record<string, unknown>;
}

export interface StateInfo {
  /** Close code of the socket that ended, when one did. */
  code?: number;
  reason?: string;
  /** Reconnect attempt number (0 for the first retry). */
  attempt?: number;
  /** ms until the next connection attempt. */
  retryIn?: number;
}

export interface SnapshotEvent {
  topic: string;
  replay: boolean;
  /** The positions taken: newer than what the client held (all of them on a first subscribe or a seek). */
  positions: Position[];
  /** Every device's latest position of the topic after the merge. */
  latest: Map<string, Position>;
  /** Set on the snapshot of a replay seek (which may go back in time). */
  seek?: boolean;
}

export interface PositionMeta {
  topic: string;
  replay: boolean;
}

export interface LiveEvent {
  topic: string;
  id?: string;
}

export interface ClientEvents {
  state: (state: State, info: StateInfo) => void;
  position: (position: Position, meta: PositionMeta) => void;
  snapshot: (snapshot: SnapshotEvent) => void;
  error: (error: LiveError) => void;
  live: (event: LiveEvent) => void;
  replay_state: (frame: ReplayStateFrame) => void;
  replay_end: (event: LiveEvent) => void;
}

export interface ReplayEvents {
  snapshot: (snapshot: SnapshotEvent) => void;
  position: (position: Position) => void;
  state: (frame: ReplayStateFrame) => void;
  end: (frame: { type: "replay_end"; topic: string; id?: string; replay: true }) => void;
  live: (frame: { type: "live"; topic: string; id?: string }) => void;
  error: (code: ErrorCode | string) => void;
}

declare class Emitter<E extends { [K in keyof E]: (...args: any[]) => void }> {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(name: K, fn: E[K]): () => void;
  off<K extends keyof E>(name: K, fn: E[K]): void;
  once<K extends keyof E>(name: K, fn: E[K]): () => void;
}

export interface ClientOptions {
  /** ws:// or wss:// URL; default: /ws-live on the page's own origin. */
  url?: string;
  backoff?: BackoffOptions;
  /** WebSocket constructor (tests, Node); default globalThis.WebSocket. */
  WebSocket?: new (url: string) => WebSocket;
  /** Random source in [0, 1) for the jitter; default Math.random. */
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

export class Replay extends Emitter<ReplayEvents> {
  readonly client: LiveClient;
  readonly topic: string;
  readonly options: ReplayOptions;
  /** The request id of the replay's current subscribe. */
  readonly id?: string;
  state: "starting" | "playing" | "paused" | "ended" | "live" | "stopped";
  status: ReplayStatus | null;
  /** device_id -> latest replayed position. */
  readonly latest: Map<string, Position>;
  pause(): Promise<ReplayStateFrame>;
  resume(): Promise<ReplayStateFrame>;
  seek(to: Date | string): Promise<ReplayStateFrame>;
  speed(speed: Speed): Promise<ReplayStateFrame>;
  /** Ends the replay early. */
  stop(): Promise<unknown>;
}

export class LiveClient extends Emitter<ClientEvents> {
  constructor(options?: ClientOptions);
  readonly url: string | null;
  readonly backoff: Required<BackoffOptions>;
  readonly state: State;
  readonly lastClose: { code: number; reason: string } | null;
  /** Reconnect attempts since the last stable connection. */
  readonly attempt: number;
  /** Opens the connection (again after close() or "unauthorized"). */
  connect(): void;
  /** Closes for good: state "closed", no reconnect. */
  close(): void;
  /** Drops the socket and connects at once (e.g. after a new login). */
  reconnect(): void;
  /** Follows an event live ("event:<uuid>" or the uuid), renewed after every reconnect; returns the topic. */
  subscribe(eventOrTopic: string, options?: SubscribeOptions): string;
  unsubscribe(eventOrTopic: string): void;
  topics(): string[];
  /** device_id -> latest live position of a topic. */
  latest(eventOrTopic: string): Map<string, Position>;
  /** Starts a replay (one per topic). */
  replay(eventOrTopic: string, options: ReplayOptions): Replay;
  replays(): Replay[];
}

export default LiveClient;

export function topicOf(eventOrTopic: string): string;
export function backoffDelay(attempt: number, options?: BackoffOptions, random?: () => number, unavailable?: boolean): number;
export function mergeLatest(latest: Map<string, Position>, positions: Position[] | null | undefined): Position[];
