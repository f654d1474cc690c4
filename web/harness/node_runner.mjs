#!/usr/bin/env node
// TF.js in Node for the parity engine (edgetl.runtimes.tfjs_node): one process runs every model.
//
//   node web/harness/node_runner.mjs --backend cpu|wasm --input inputs.bin --shape K,H,W,3 \
//        --out DIR --model ID=FORMAT:PATH [--model ...] [--layers name1,name2]
//
// FORMAT is tfjs_layers (tf.loadLayersModel) or tfjs_graph (tf.loadGraphModel); PATH is a
// model.json on disk, read with its weight shards by a small file IOHandler (tfjs-node, which
// has one, needs libtensorflow downloaded at install time). The input file is raw little-endian
// float32 (the bundle's probes/inputs.bin); it goes to predict() as is.
//
// Writes, under DIR:
//   <ID>/output_<k>.bin   raw little-endian float32 of the model's k-th output
//   <ID>/layer_<k>.bin    with --layers (layers models only): the k-th found layer's output;
//                         layers of nested models are included (their names are unique)
//   summary.json          {backend, tfjs_version, wasm_simd, models: {ID: {format, outputs:
//                         [{name, shape, file}], layers: [...], timings: {load_ms, infer_ms,
//                         layers_ms}, error?}}}
// A model that fails to load or run gets an "error" entry and the others still run; the exit
// status is non-zero only when the run as a whole cannot happen (bad arguments, no backend).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {createRequire} from 'node:module';
import {fileURLToPath} from 'node:url';
import {performance} from 'node:perf_hooks';

const require = createRequire(import.meta.url);
const tf = require('@tensorflow/tfjs');

const USAGE = 'usage: node_runner.mjs --backend cpu|wasm --input FILE --shape K,H,W,C --out DIR ' +
    '--model ID=FORMAT:PATH [--model ...] [--layers a,b,...]';

function parseArgs(argv) {
  const args = {models: [], layers: []};
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${key} needs a value\n${USAGE}`);
      return argv[++i];
    };
    if (key === '--backend') args.backend = value();
    else if (key === '--input') args.input = value();
    else if (key === '--shape') args.shape = value().split(',').map(Number);
    else if (key === '--out') args.out = value();
    else if (key === '--layers') args.layers = value().split(',').filter(Boolean);
    else if (key === '--model') {
      const m = /^([^=]+)=(tfjs_layers|tfjs_graph):(.+)$/.exec(value());
      if (!m) throw new Error(`--model wants ID=tfjs_layers:PATH or ID=tfjs_graph:PATH\n${USAGE}`);
      args.models.push({id: m[1], format: m[2], path: m[3]});
    } else if (key === '--help' || key === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${key}\n${USAGE}`);
  }
  for (const k of ['backend', 'input', 'shape', 'out']) {
    if (args[k] == null) throw new Error(`--${k} is required\n${USAGE}`);
  }
  if (!args.models.length) throw new Error(`at least one --model is required\n${USAGE}`);
  if (args.shape.some((d) => !Number.isInteger(d) || d <= 0)) {
    throw new Error(`bad --shape ${args.shape}`);
  }
  return args;
}

/** A tf.io.IOHandler reading model.json and its weight shards from the local disk. */
export function fileHandler(modelJsonPath) {
  const dir = path.dirname(modelJsonPath);
  return {
    load: async () => {
      const modelJSON = JSON.parse(fs.readFileSync(modelJsonPath, 'utf8'));
      return tf.io.getModelArtifactsForJSON(modelJSON, async (manifest) => {
        const specs = [];
        const buffers = [];
        for (const group of manifest) {
          specs.push(...group.weights);
          for (const p of group.paths) {
            const b = fs.readFileSync(path.join(dir, p));
            buffers.push(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
          }
        }
        return [specs, tf.io.concatenateArrayBuffers(buffers)];
      });
    },
  };
}

export async function setBackend(name) {
  if (name === 'wasm') {
    const wasm = require('@tensorflow/tfjs-backend-wasm');
    const dist = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm'));
    wasm.setWasmPaths(dist + path.sep);
  } else if (name !== 'cpu') {
    throw new Error(`unknown backend ${name}: use cpu or wasm (webgl needs a browser)`);
  }
  const ok = await tf.setBackend(name);
  await tf.ready();
  if (!ok || tf.getBackend() !== name) {
    throw new Error(`the TF.js ${name} backend failed to start (active: ${tf.getBackend()})`);
  }
  const info = {backend: tf.getBackend(), tfjs_version: tf.version.tfjs, node: process.version};
  if (name === 'wasm') info.wasm_simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  return info;
}

export function readFloat32(file, shape) {
  const buf = fs.readFileSync(file);
  const count = shape.reduce((a, b) => a * b, 1);
  if (buf.byteLength !== count * 4) {
    throw new Error(`${file}: ${buf.byteLength} bytes, expected ${count * 4} for [${shape}]`);
  }
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = buf.readFloatLE(i * 4);
  return out;
}

function writeFloat32(file, data) {
  const buf = Buffer.alloc(data.length * 4);
  for (let i = 0; i < data.length; i++) buf.writeFloatLE(data[i], i * 4);
  fs.writeFileSync(file, buf);
}

export async function loadModel(format, modelPath) {
  const handler = fileHandler(path.resolve(modelPath));
  if (format === 'tfjs_layers') return tf.loadLayersModel(handler);
  if (format === 'tfjs_graph') return tf.loadGraphModel(handler);
  throw new Error(`unknown format ${format}`);
}

function asList(y) {
  if (Array.isArray(y)) return y;
  if (y instanceof tf.Tensor) return [y];
  return Object.values(y);
}

function isContainer(layer) {
  return Array.isArray(layer.layers) && layer.containerNodes instanceof Set;
}

/**
 * Symbolic taps for the wanted layers of `model`, descending into nested models the way Keras
 * does: a nested model's own layers are read by running it on the tensor it was called with.
 * Returns the outputs of `model` for x, as {layerName: tf.Tensor}.
 */
function layerOutputs(model, x, wanted, out) {
  const taps = [];
  const plan = [];
  const tapIndex = new Map(); // symbolic tensor id -> index in taps (tfjs rejects duplicates)
  const tap = (t) => {
    if (!tapIndex.has(t.id)) {
      tapIndex.set(t.id, taps.length);
      taps.push(t);
    }
    return tapIndex.get(t.id);
  };
  for (const layer of model.layers) {
    if (layer.getClassName() === 'InputLayer') continue;
    const nested = isContainer(layer);
    if (!nested && !wanted.has(layer.name)) continue;
    // The node of this layer that belongs to `model` (a nested model also has its own node 0).
    const nodeIndex = layer.inboundNodes.findIndex(
        (_, i) => model.containerNodes.has(`${layer.name}_ib-${i}`));
    if (nodeIndex < 0) continue;
    const output = layer.getOutputAt(nodeIndex);
    const outputIndex = tap(Array.isArray(output) ? output[0] : output);
    let inputIndex = null;
    if (nested) {
      const input = layer.getInputAt(nodeIndex);
      inputIndex = tap(Array.isArray(input) ? input[0] : input);
    }
    plan.push({layer, nested, outputIndex, inputIndex});
  }
  if (!taps.length) return;
  const probe = tf.model({inputs: model.inputs, outputs: taps});
  const values = asList(probe.predict(x));
  for (const {layer, nested, outputIndex, inputIndex} of plan) {
    if (nested) layerOutputs(layer, values[inputIndex], wanted, out);
    if (wanted.has(layer.name) && !(layer.name in out)) out[layer.name] = values[outputIndex];
  }
  for (let i = 0; i < values.length; i++) {
    if (!Object.values(out).includes(values[i])) values[i].dispose();
  }
}

async function runModel(spec, x, wanted, outDir) {
  const entry = {format: spec.format, path: spec.path, outputs: [], layers: [], timings: {}};
  const dir = path.join(outDir, spec.id);
  fs.mkdirSync(dir, {recursive: true});
  const t0 = performance.now();
  const model = await loadModel(spec.format, spec.path);
  const t1 = performance.now();
  entry.timings.load_ms = t1 - t0;
  const ys = asList(spec.format === 'tfjs_graph' ? model.predict(x) : model.predict(x));
  const names = model.outputNames || (model.outputs || []).map((o) => o.name);
  for (let k = 0; k < ys.length; k++) {
    const data = await ys[k].data();
    const file = `output_${k}.bin`;
    writeFloat32(path.join(dir, file), data);
    entry.outputs.push({name: names[k] || `output_${k}`, shape: ys[k].shape, file: `${spec.id}/${file}`});
    ys[k].dispose();
  }
  entry.timings.infer_ms = performance.now() - t1;
  if (wanted.size && spec.format === 'tfjs_layers') {
    const t2 = performance.now();
    const got = {};
    layerOutputs(model, x, wanted, got);
    let k = 0;
    for (const [name, t] of Object.entries(got)) {
      const file = `layer_${k++}.bin`;
      writeFloat32(path.join(dir, file), await t.data());
      entry.layers.push({name, shape: t.shape, file: `${spec.id}/${file}`});
      t.dispose();
    }
    entry.timings.layers_ms = performance.now() - t2;
  }
  model.dispose();
  return entry;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (os.endianness() !== 'LE') console.error('note: big-endian host; files are little-endian');
  const info = await setBackend(args.backend);
  fs.mkdirSync(args.out, {recursive: true});
  const x = tf.tensor(readFloat32(args.input, args.shape), args.shape, 'float32');
  const wanted = new Set(args.layers);
  const summary = {...info, input_shape: args.shape, models: {}};
  for (const spec of args.models) {
    try {
      summary.models[spec.id] = await runModel(spec, x, wanted, args.out);
    } catch (e) {
      summary.models[spec.id] = {format: spec.format, path: spec.path,
                                 error: e && e.message ? e.message : String(e)};
    }
  }
  x.dispose();
  fs.writeFileSync(path.join(args.out, 'summary.json'), JSON.stringify(summary, null, 1));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e && e.stack ? e.stack : String(e));
    process.exit(1);
  });
}
