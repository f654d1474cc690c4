#!/usr/bin/env node
// The classic TF.js MobileNet transfer-learning recipe, run for real on an exported Layers model:
// load it, freeze it, cut it at the embedding ("features_pool", else the layer before the last),
// train a new dense head for 2 classes on synthetic images, and check that it learned.
//
//   node web/harness/transfer_node.mjs --model path/to/model.json [--backend cpu|wasm]
//        [--layer features_pool] [--steps 15] [--images 16]
//
// Prints one JSON line: {feature_layer, embedding_dim, losses, trainable_weights, ...}.
// Exits 1 (with the reason on stderr) when the loss does not fall, when any frozen weight of the
// base changed, or when the combined model (frozen base + new head) disagrees with the head run
// on the cached embeddings.

import {createRequire} from 'node:module';
import {loadModel, setBackend} from './node_runner.mjs';

const require = createRequire(import.meta.url);
const tf = require('@tensorflow/tfjs');

function parseArgs(argv) {
  const args = {backend: 'cpu', layer: 'features_pool', steps: 15, images: 16, lr: 0.001};
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in args) && key !== 'model') throw new Error(`unknown argument ${argv[i]}`);
    args[key] = ['steps', 'images', 'lr'].includes(key) ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!args.model) throw new Error('--model path/to/model.json is required');
  return args;
}

/** Two classes of synthetic images in 0..255: reddish vs bluish, with per-pixel noise. */
function syntheticImages(n, h, w) {
  return tf.tidy(() => {
    const labels = Array.from({length: n}, (_, i) => i % 2);
    const colors = tf.tensor2d(labels.map((c) => (c === 0 ? [190, 60, 60] : [60, 60, 190])));
    const noise = tf.randomUniform([n, h, w, 3], -50, 50, 'float32', 42);
    const x = colors.reshape([n, 1, 1, 3]).add(noise).clipByValue(0, 255);
    return {x, y: tf.oneHot(tf.tensor1d(labels, 'int32'), 2).cast('float32')};
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  await setBackend(args.backend);
  tf.setSeed?.(0);
  const model = await loadModel('tfjs_layers', args.model);
  const names = model.layers.map((l) => l.name);
  const featureLayer = names.includes(args.layer) ? model.getLayer(args.layer)
                                                   : model.layers[model.layers.length - 2];
  // Freeze the whole pretrained model; its truncated copy shares the (frozen) layers.
  for (const layer of model.layers) layer.trainable = false;
  const base = tf.model({inputs: model.inputs, outputs: featureLayer.output});
  const before = base.getWeights().map((w) => w.dataSync().slice());

  const [, h, w] = model.inputs[0].shape;
  const {x, y} = syntheticImages(args.images, h, w);
  // The recipe: embeddings from the frozen base in inference mode, a new head trained on them.
  const embeddings = base.predict(x);
  const dim = embeddings.shape.slice(1);
  const head = tf.sequential({name: 'new_head', layers: [
    ...(dim.length > 1 ? [tf.layers.flatten({inputShape: dim})] : []),
    tf.layers.dense({units: 2, activation: 'softmax', kernelInitializer: 'zeros',
                     inputShape: dim.length > 1 ? undefined : dim, name: 'new_head_dense'}),
  ]});
  head.compile({optimizer: tf.train.adam(args.lr), loss: 'categoricalCrossentropy',
                metrics: ['accuracy']});
  const hist = await head.fit(embeddings, y, {epochs: args.steps, batchSize: args.images,
                                              shuffle: false, verbose: 0});
  const losses = hist.history.loss.map(Number);

  // The deployable model: frozen base + new head in one graph, predicting from raw pixels.
  const combined = tf.model({inputs: base.inputs, outputs: head.apply(base.outputs[0])});
  const direct = combined.predict(x);
  const viaHead = head.predict(embeddings);
  const headGap = direct.sub(viaHead).abs().max().dataSync()[0];
  const after = base.getWeights().map((w) => w.dataSync());
  const changed = before.filter((b, i) => b.some((v, j) => v !== after[i][j])).length;
  const report = {
    backend: tf.getBackend(),
    feature_layer: featureLayer.name,
    embedding_dim: dim,
    losses,
    accuracy: hist.history.acc ? Number(hist.history.acc.at(-1)) : null,
    trainable_weights: combined.trainableWeights.map((v) => v.name),
    frozen_weights: base.weights.length,
    frozen_changed: changed,
    combined_vs_head_max_abs: headGap,
  };
  console.log(JSON.stringify(report));
  const problems = [];
  if (!(losses.at(-1) < losses[0] * 0.9)) problems.push(`loss did not fall: ${losses[0]} -> ${losses.at(-1)}`);
  if (changed) problems.push(`${changed} frozen weight tensors changed`);
  if (!(headGap <= 1e-5)) problems.push(`combined model differs from head on embeddings by ${headGap}`);
  if (report.trainable_weights.length !== 2) {
    problems.push(`expected only the new head's kernel and bias to be trainable, got ${report.trainable_weights}`);
  }
  if (problems.length) {
    console.error(problems.join('\n'));
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
