// check.mjs: the /ws-live contract cannot drift from its AsyncAPI document.
//
// 1. docs/asyncapi.yaml parses and validates with the AsyncAPI parser (no
//    diagnostic of severity error).
// 2. Every golden frame the Go code writes and reads (contract/testdata/ws,
//    and contract/ws/testdata when present) names a message by its "type"
//    and validates against exactly one message schema of that type; a
//    frame whose type no message has fails. The position goldens
//    (contract/testdata/position_*.json) validate against Position.
// 3. Every example of every message validates the same way.
// 4. Deliberately wrong frames are rejected, so the check cannot pass
//    vacuously.
//
// Usage: node check.mjs [repository root] (default: ../../..). Exits 1 on
// any failure. Run by scripts/test.d/protocol.sh.
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join, resolve, relative, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Parser } from '@asyncapi/parser';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(process.argv[2] ?? join(here, '..', '..', '..'));
const specPath = join(root, 'docs', 'asyncapi.yaml');

let passed = 0;
let failed = 0;
const ok = (what) => { passed++; console.log(`ok   ${what}`); };
const fail = (what, detail) => { failed++; console.log(`FAIL ${what}${detail ? `\n     ${detail}` : ''}`); };

// 1. The document.
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(specPath, 'utf8'), { source: specPath });
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics.filter((d) => d.severity !== 0)) {
  console.log(`note ${d.code}: ${d.message} at ${d.path.join('.')}`);
}
if (!document || errors.length > 0) {
  for (const d of errors) fail(`asyncapi.yaml: ${d.code}`, `${d.message} at ${d.path.join('.')}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(1);
}
ok(`asyncapi.yaml is a valid AsyncAPI ${document.version()} document`);

// The message schemas, dereferenced by the parser.
const ajv = new Ajv({ strict: true, allErrors: true });
addFormats(ajv);
ajv.addKeyword('x-parser-schema-id'); // the parser's annotation on every schema
const messages = []; // {id, type, validate, examples}
const byType = new Map();
for (const m of document.components().messages()) {
  const payload = m.payload()?.json();
  if (!payload) {
    fail(`message ${m.id()}: no payload schema`);
    continue;
  }
  const types = new Set();
  for (const s of [payload, ...(payload.oneOf ?? [])]) {
    const c = s.properties?.type?.const;
    if (c !== undefined) types.add(c);
  }
  if (types.size !== 1) {
    fail(`message ${m.id()}: payload must fix exactly one "type" with const, has ${[...types].join(', ') || 'none'}`);
    continue;
  }
  const entry = {
    id: m.id(),
    type: [...types][0],
    validate: ajv.compile(payload),
    examples: m.examples().all().map((e) => ({ name: e.name(), payload: e.payload() })),
  };
  messages.push(entry);
  if (!byType.has(entry.type)) byType.set(entry.type, []);
  byType.get(entry.type).push(entry);
}
const positionSchema = document.components().schemas().get('Position')?.json();
if (!positionSchema) fail('components.schemas.Position is missing');
const validatePosition = positionSchema ? ajv.compile(positionSchema) : () => false;

const explain = (v) => ajv.errorsText(v.errors, { separator: '; ' });

// match returns the messages a frame validates against, and why the
// others refused it.
function match(frame) {
  const candidates = byType.get(frame?.type) ?? [];
  const hits = [];
  const why = [];
  for (const m of candidates) {
    if (m.validate(frame)) hits.push(m.id);
    else why.push(`${m.id}: ${explain(m.validate)}`);
  }
  return { candidates, hits, why };
}

function expectOne(what, frame) {
  const { candidates, hits, why } = match(frame);
  if (candidates.length === 0) return fail(what, `type ${JSON.stringify(frame?.type)} maps to no message of asyncapi.yaml`);
  if (hits.length === 1) return ok(`${what} -> ${hits[0]}`);
  if (hits.length > 1) return fail(what, `matches several messages: ${hits.join(', ')}`);
  return fail(what, why.join('\n     '));
}

// 2. The golden frames.
const goldenDirs = [join(root, 'contract', 'testdata', 'ws'), join(root, 'contract', 'ws', 'testdata')].filter(existsSync);
let frames = 0;
for (const dir of goldenDirs) {
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.json')).sort()) {
    const path = join(dir, f);
    let frame;
    try {
      frame = JSON.parse(readFileSync(path, 'utf8'));
    } catch (e) {
      fail(relative(root, path), `not JSON: ${e.message}`);
      continue;
    }
    frames++;
    expectOne(relative(root, path), frame);
  }
}
if (frames === 0) fail('golden frames', `none found in ${goldenDirs.map((d) => relative(root, d)).join(', ') || 'contract/testdata/ws'}`);
const posDir = join(root, 'contract', 'testdata');
const positionFiles = readdirSync(posDir).filter((f) => /^position_.*\.json$/.test(f)).sort();
if (positionFiles.length === 0) fail('position goldens', 'none found in contract/testdata');
for (const f of positionFiles) {
  const p = JSON.parse(readFileSync(join(posDir, f), 'utf8'));
  if (validatePosition(p)) ok(`contract/testdata/${f} -> Position`);
  else fail(`contract/testdata/${f}`, explain(validatePosition));
}

// 3. The examples of the document itself.
for (const m of messages) {
  for (const ex of m.examples) {
    const { hits } = match(ex.payload);
    if (m.validate(ex.payload) && hits.length === 1) ok(`example ${m.id}/${ex.name}`);
    else fail(`example ${m.id}/${ex.name}`, m.validate(ex.payload) ? `matches ${hits.join(', ')}` : explain(m.validate));
  }
}

// 4. Frames the contract forbids: each must match no message.
const topic = 'event:7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a';
const pos = { device_id: 'dev-1', event_id: '7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a', ts: '2026-05-03T10:00:00.123Z', lat: -33.5, lon: -70.25 };
const wrong = {
  'unknown type': { type: 'subscribed_all', topic },
  'no type': { topic },
  'uppercase uuid in topic': { type: 'subscribe', topic: topic.toUpperCase().replace('EVENT:', 'event:') },
  'unknown field on subscribe': { type: 'subscribe', topic, topics: [topic] },
  'id over 64 bytes': { type: 'subscribe', topic, id: 'x'.repeat(65) },
  'max_hz 0': { type: 'subscribe', topic, max_hz: 0 },
  'devices empty': { type: 'subscribe', topic, devices: [] },
  'device id with a space': { type: 'subscribe', topic, devices: ['dev 1'] },
  'replay without from': { type: 'subscribe', topic, replay: { speed: 2 } },
  'replay speed 0': { type: 'subscribe', topic, replay: { from: '2026-05-03T10:00:00Z', speed: 0 } },
  'replay to not a time': { type: 'subscribe', topic, replay: { from: '2026-05-03T10:00:00Z', to: 'tomorrow' } },
  'seek without to': { type: 'replay', topic, action: 'seek' },
  'unknown replay action': { type: 'replay', topic, action: 'rewind' },
  'subscribed without snapshot': { type: 'subscribed', topic },
  'position lat 91': { type: 'positions', topic, positions: [{ ...pos, lat: 91 }] },
  'position ts without milliseconds': { type: 'positions', topic, positions: [{ ...pos, ts: '2026-05-03T10:00:00Z' }] },
  'position with an unknown field': { type: 'positions', topic, positions: [{ ...pos, colour: 'red' }] },
  'position without lon': { type: 'positions', topic, positions: [{ device_id: 'dev-1', ts: pos.ts, lat: 1 }] },
  'replay positions with replay false': { type: 'positions', topic, replay: false, positions: [pos] },
  'error with an unknown code': { type: 'error', code: 'boom', message: 'x' },
  'error without message': { type: 'error', code: 'forbidden' },
  'replay_end without replay': { type: 'replay_end', topic },
  'replay_state state stopped': { type: 'replay_state', topic, replay: true, action: 'pause', from: pos.ts, speed: 1, state: 'stopped', at: pos.ts },
  'live with a snapshot': { type: 'live', topic, snapshot: [] },
};
for (const [name, frame] of Object.entries(wrong)) {
  const { hits } = match(frame);
  if (hits.length === 0) ok(`rejects: ${name}`);
  else fail(`accepted a wrong frame: ${name}`, `matched ${hits.join(', ')}`);
}
if (validatePosition({ ...pos, sats: 1.5 })) fail('accepted a wrong position: sats 1.5');
else ok('rejects: position sats 1.5');

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
