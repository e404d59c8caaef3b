#!/usr/bin/env node
'use strict';
// A fedstream worker in JavaScript, reading the .proto files directly: it joins the
// coordinator, pulls the task and the weights, fetches its clients' batches from the data
// pool, computes the FedSGD update in plain JavaScript (mlp.js) and pushes it.
//
//   node worker.js --coordinator 127.0.0.1:50051 --datapool 127.0.0.1:50052 [--units N]
//                  [--dump-update FILE]
//
// --units N leaves after N pushed units; --dump-update writes the last update's tensors
// (raw little-endian float32, concatenated in order, before any encoding) to FILE.
//
// Weights arrive raw, float16, bfloat16 or int8 (Task.weights_encoding); updates go out in
// Task.update_encoding when it is float16, bfloat16 or int8 (stochastic rounding), else raw,
// which every coordinator accepts.

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { parseModel, bindWeights, weightedGradient } = require('./mlp');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const CHUNK_BYTES = 1 << 20;
const DTYPE_BYTES = {
  DTYPE_FLOAT32: 4, DTYPE_FLOAT64: 8, DTYPE_FLOAT16: 2, DTYPE_INT8: 1, DTYPE_INT16: 2,
  DTYPE_INT32: 4, DTYPE_INT64: 8, DTYPE_UINT8: 1, DTYPE_UINT16: 2, DTYPE_UINT32: 4,
  DTYPE_UINT64: 8, DTYPE_BOOL: 1,
};

function parseArgs(argv) {
  const args = { units: Infinity, dumpUpdate: null, name: `node-${process.pid}` };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-(\w)/g, (_, ch) => ch.toUpperCase());
    args[key] = key === 'units' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!args.coordinator || !args.datapool) {
    throw new Error('usage: worker.js --coordinator HOST:PORT --datapool HOST:PORT');
  }
  return args;
}

function loadServices() {
  const definition = protoLoader.loadSync(
    ['fedstream/v1/coordinator.proto', 'fedstream/v1/datapool.proto'],
    { includeDirs: [PROTO_ROOT], keepCase: true, longs: Number, enums: String,
      defaults: true, oneofs: true });
  return grpc.loadPackageDefinition(definition).fedstream.v1;
}

const unary = (client, method, request) => new Promise((resolve, reject) => {
  client[method](request, (err, reply) => (err ? reject(err) : resolve(reply)));
});

// Read a header+chunks stream into { header, payload }: chunks are copied to their offset
// in one buffer allocated from the header's total_bytes; gaps and overruns are errors.
function readTensorStream(call) {
  return new Promise((resolve, reject) => {
    let header = null;
    let payload = null;
    let filled = 0;
    call.on('data', (msg) => {
      if (msg.kind === 'header') {
        if (header) return reject(new Error('second header in stream'));
        header = msg.header;
        payload = Buffer.alloc(header.tensors.total_bytes);
      } else {
        const { offset, data } = msg.chunk;
        if (!header || offset !== filled || filled + data.length > payload.length) {
          return reject(new Error(`bad chunk at offset ${offset}`));
        }
        data.copy(payload, offset);
        filled += data.length;
      }
    });
    call.on('error', reject);
    call.on('end', () => {
      if (!header) return reject(new Error('empty stream'));
      if (!header.unchanged && filled !== payload.length) {
        return reject(new Error(`truncated: ${filled} of ${payload.length} bytes`));
      }
      resolve({ header, payload });
    });
  });
}

// float32 <-> IEEE binary16 bits, rounding to nearest even (docs/PROTOCOL.md, Encodings).
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function toHalf(value) {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const biased = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (biased === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const exp = biased - 127 + 15;
  if (exp >= 0x1f) return sign | 0x7c00;
  let shift = 13;
  let half;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    shift = 14 - exp;
    half = mant >>> shift;
  } else {
    half = (exp << 10) | (mant >>> 13);
  }
  const rem = mant & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  if (rem > halfway || (rem === halfway && (half & 1))) half += 1;
  return sign | half;
}
function fromHalf(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}
function toBfloat16(value) {
  f32[0] = value;
  const x = u32[0];
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}
function fromBfloat16(h) {
  u32[0] = (h << 16) >>> 0;
  return f32[0];
}

// float32 tensors from a compressed payload (specs say float32 and the shape).
function decodeCompressed(encoding, specs, payload) {
  let offset = 0;
  const out = specs.map((spec) => {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(n);
    if (encoding === 'ENCODING_FLOAT16' || encoding === 'ENCODING_BFLOAT16') {
      const widen = encoding === 'ENCODING_FLOAT16' ? fromHalf : fromBfloat16;
      for (let i = 0; i < n; i++) values[i] = widen(payload.readUInt16LE(offset + 2 * i));
      offset += 2 * n;
    } else if (encoding === 'ENCODING_INT8') {
      const scale = payload.readFloatLE(offset);
      for (let i = 0; i < n; i++) values[i] = payload.readInt8(offset + 4 + i) * scale;
      offset += 4 + n;
    } else {
      throw new Error(`encoding ${encoding} not handled by this client`);
    }
    return values;
  });
  if (offset !== payload.length) throw new Error(`${encoding} payload of ${payload.length} bytes`);
  return out;
}

// The payload of float32 arrays in `encoding` (float16, bfloat16, int8 or raw).
function encodeUpdate(encoding, arrays) {
  if (encoding === 'ENCODING_FLOAT16' || encoding === 'ENCODING_BFLOAT16') {
    // float16 saturates at +-65504 rather than sending an infinity, as fedstream's encoder
    const narrow = encoding === 'ENCODING_FLOAT16'
      ? (v) => toHalf(Math.max(-65504, Math.min(65504, v))) : toBfloat16;
    const payload = Buffer.alloc(arrays.reduce((n, a) => n + 2 * a.length, 0));
    let offset = 0;
    for (const a of arrays) {
      for (let i = 0; i < a.length; i++, offset += 2) payload.writeUInt16LE(narrow(a[i]), offset);
    }
    return payload;
  }
  if (encoding === 'ENCODING_INT8') {
    const payload = Buffer.alloc(arrays.reduce((n, a) => n + 4 + a.length, 0));
    let offset = 0;
    for (const a of arrays) {
      let max = 0;
      for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]));
      f32[0] = max / 127;
      const scale = f32[0];
      payload.writeFloatLE(scale, offset);
      offset += 4;
      for (let i = 0; i < a.length; i++, offset++) {
        // stochastic rounding: floor(x / scale + u), u uniform in [0, 1): unbiased
        const q = scale > 0 ? Math.floor(a[i] / scale + Math.random()) : 0;
        payload.writeInt8(Math.max(-127, Math.min(127, q)), offset);
      }
    }
    return payload;
  }
  return encodeFloat32(arrays);
}

const SENT_ENCODINGS = ['ENCODING_FLOAT16', 'ENCODING_BFLOAT16', 'ENCODING_INT8'];

// Split a payload into typed arrays per the header's specs (little-endian on the wire).
function decodeTensors(specs, payload, encoding = 'ENCODING_RAW') {
  if (encoding !== 'ENCODING_RAW') return decodeCompressed(encoding, specs, payload);
  let offset = 0;
  return specs.map((spec) => {
    const count = spec.shape.reduce((a, b) => a * b, 1);
    const bytes = count * DTYPE_BYTES[spec.dtype];
    const view = new DataView(payload.buffer, payload.byteOffset + offset, bytes);
    offset += bytes;
    if (spec.dtype === 'DTYPE_FLOAT32') {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    }
    if (spec.dtype === 'DTYPE_UINT8') return new Uint8Array(payload.buffer, payload.byteOffset + offset - bytes, count);
    throw new Error(`dtype ${spec.dtype} not handled by this client`);
  });
}

function encodeFloat32(arrays) {
  const total = arrays.reduce((n, a) => n + 4 * a.length, 0);
  const payload = Buffer.alloc(total);
  let offset = 0;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++, offset += 4) payload.writeFloatLE(a[i], offset);
  }
  return payload;
}

function pushUpdate(coordinator, headerFields, specs, payload, encoding) {
  return new Promise((resolve, reject) => {
    const call = coordinator.PushUpdate((err, reply) => (err ? reject(err) : resolve(reply)));
    call.write({ header: { ...headerFields, tensors: {
      tensors: specs.map((s) => ({ name: s.name, dtype: 'DTYPE_FLOAT32', shape: s.shape })),
      encoding, total_bytes: payload.length } } });
    for (let offset = 0; offset < payload.length; offset += CHUNK_BYTES) {
      call.write({ chunk: { offset, data: payload.subarray(offset, offset + CHUNK_BYTES) } });
    }
    call.end();
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const v1 = loadServices();
  const insecure = grpc.credentials.createInsecure();
  const coordinator = new v1.Coordinator(args.coordinator, insecure);
  const datapool = new v1.DataPool(args.datapool, insecure);
  const { worker_id: workerId, task } = await unary(coordinator, 'Join',
    { worker_name: args.name, device: 'node' });
  if (task.update_kind !== 'UPDATE_KIND_GRADIENT') throw new Error('only FedSGD gradients');
  if (task.dropout) throw new Error('this client runs the model in inference mode only');
  if (task.per_client_updates) throw new Error('this client pushes fused unit sums only');
  const layers = parseModel(task.model_json);
  const info = await unary(datapool, 'GetInfo', {});
  const inputSize = info.example.shape.reduce((a, b) => a * b, 1);
  let version = 0;
  let done = 0;
  console.log(`joined as ${workerId}`);
  while (done < args.units) {
    const a = await unary(coordinator, 'GetAssignment', { worker_id: workerId, wait_ms: 5000 });
    if (a.action === 'STOP') break;
    if (a.action !== 'TRAIN') continue;
    if (a.version !== version) {
      const { header, payload } = await readTensorStream(
        coordinator.PullWeights({ worker_id: workerId, have_version: version }));
      if (!header.unchanged) {
        bindWeights(layers, decodeTensors(header.tensors.tensors, payload,
          header.tensors.encoding), inputSize);
      }
      version = header.version;
    }
    const batch = await readTensorStream(datapool.StreamBatches(
      { client_ids: a.client_ids, step: a.step, batch_size: task.batch_size }));
    const [x, y] = decodeTensors(batch.header.tensors.tensors, batch.payload);
    const sizes = batch.header.sizes;
    const clientWeights = sizes.map((n) => (task.weighting === 'CLIENT_WEIGHTING_EXAMPLES' ? n : 1));
    const exampleWeights = new Float64Array(y.length);
    let row = 0;
    sizes.forEach((n, c) => { for (let i = 0; i < n; i++) exampleWeights[row++] = clientWeights[c] / n; });
    const weight = clientWeights.reduce((s, w) => s + w, 0);
    const { grads, loss } = weightedGradient(layers, x, y, y.length, exampleWeights,
      task.input_divisor, task.num_classes);
    if (args.dumpUpdate) fs.writeFileSync(args.dumpUpdate, encodeFloat32(grads));
    const encoding = SENT_ENCODINGS.includes(task.update_encoding) ? task.update_encoding
      : 'ENCODING_RAW';
    const payload = encodeUpdate(encoding, grads);
    const reply = await pushUpdate(coordinator, {
      worker_id: workerId, round: a.round, base_version: version, unit: a.unit,
      client_ids: a.client_ids, weight, num_examples: y.length,
      metrics: { loss: loss / weight } }, task.update_tensors, payload, encoding);
    done += 1;
    console.log(`round ${a.round} unit ${a.unit}: pushed ${payload.length} bytes ${encoding}, ` +
                `accepted=${reply.accepted}, now version ${reply.version}`);
  }
  if (done >= args.units) await unary(coordinator, 'Leave', { worker_id: workerId });
  coordinator.close();
  datapool.close();
}

if (require.main === module) {
  main().catch((err) => {
    console.error(`fedstream node worker: ${err.message}`);
    process.exit(1);
  });
}

module.exports = { encodeUpdate, decodeTensors };
