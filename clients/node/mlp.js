'use strict';
// The FedSGD update of a Keras MLP (Flatten, Dense with relu/softmax/linear, Dropout in
// inference mode) in plain JavaScript, from the model's Keras JSON and raw float32 weights.
// Intermediates are float64; the loss is softmax cross-entropy from the logits, so the
// gradient at the output is p - onehot(y) (no clipping, no saturation).

function parseModel(modelJson) {
  const model = JSON.parse(modelJson);
  const layers = [];
  for (const layer of model.config.layers) {
    const cfg = layer.config;
    switch (layer.class_name) {
      case 'InputLayer':
      case 'Flatten':
        break;
      case 'Dropout':
        layers.push({ kind: 'dropout' });
        break;
      case 'Dense':
        if (!['relu', 'softmax', 'linear'].includes(cfg.activation)) {
          throw new Error(`Dense activation ${cfg.activation} is not implemented here`);
        }
        layers.push({ kind: 'dense', units: cfg.units, activation: cfg.activation,
                      useBias: cfg.use_bias !== false });
        break;
      default:
        throw new Error(`layer ${layer.class_name} is not implemented by this client`);
    }
  }
  const dense = layers.filter((l) => l.kind === 'dense');
  if (!dense.length || dense[dense.length - 1].activation !== 'softmax') {
    throw new Error('expected an MLP ending in a softmax Dense layer');
  }
  return layers;
}

// Attach kernels and biases (Float32Arrays, in Keras' weight order) to the dense layers.
function bindWeights(layers, tensors, inputSize) {
  let k = 0;
  let fanIn = inputSize;
  for (const layer of layers) {
    if (layer.kind !== 'dense') continue;
    layer.in = fanIn;
    layer.kernel = tensors[k++];
    layer.bias = layer.useBias ? tensors[k++] : new Float32Array(layer.units);
    if (layer.kernel.length !== fanIn * layer.units) {
      throw new Error(`kernel of ${layer.kernel.length} values, expected ${fanIn}x${layer.units}`);
    }
    fanIn = layer.units;
  }
  if (k !== tensors.length) throw new Error(`${tensors.length} weight tensors, used ${k}`);
}

// out[n x m] = a[n x k] . w[k x m] + b  (skipping zero inputs: raw pixels and relu are sparse)
function affine(a, n, k, w, m, b) {
  const out = new Float64Array(n * m);
  for (let i = 0; i < n; i++) {
    const row = i * m;
    for (let j = 0; j < m; j++) out[row + j] = b[j];
    for (let p = 0; p < k; p++) {
      const v = a[i * k + p];
      if (v === 0) continue;
      const wr = p * m;
      for (let j = 0; j < m; j++) out[row + j] += v * w[wr + j];
    }
  }
  return out;
}

// Gradient of sum_i weight_i * CCE(y_i, softmax(logits_i)) with respect to every kernel and
// bias, plus that weighted loss. x: Uint8Array of n examples, y: labels.
function weightedGradient(layers, x, y, n, exampleWeights, inputDivisor, numClasses) {
  const dense = layers.filter((l) => l.kind === 'dense');
  const d0 = dense[0].in;
  const input = new Float64Array(n * d0);
  for (let i = 0; i < n * d0; i++) input[i] = Math.fround(x[i] / inputDivisor);
  const acts = [input];
  const pre = [];
  for (const layer of dense) {
    const a = acts[acts.length - 1];
    const z = affine(a, n, layer.in, layer.kernel, layer.units, layer.bias);
    pre.push(z);
    if (layer.activation === 'relu') {
      const h = new Float64Array(z.length);
      for (let i = 0; i < z.length; i++) h[i] = z[i] > 0 ? z[i] : 0;
      acts.push(h);
    } else {
      acts.push(z);
    }
  }
  // softmax cross-entropy from the logits
  const logits = pre[pre.length - 1];
  const c = numClasses;
  let dz = new Float64Array(n * c);
  let loss = 0;
  for (let i = 0; i < n; i++) {
    let max = -Infinity;
    for (let j = 0; j < c; j++) max = Math.max(max, logits[i * c + j]);
    let sum = 0;
    for (let j = 0; j < c; j++) sum += Math.exp(logits[i * c + j] - max);
    const logSum = Math.log(sum) + max;
    loss += exampleWeights[i] * (logSum - logits[i * c + y[i]]);
    for (let j = 0; j < c; j++) {
      const p = Math.exp(logits[i * c + j] - logSum);
      dz[i * c + j] = exampleWeights[i] * (p - (j === y[i] ? 1 : 0));
    }
  }
  const grads = [];
  for (let l = dense.length - 1; l >= 0; l--) {
    const layer = dense[l];
    const a = acts[l];
    const k = layer.in;
    const m = layer.units;
    const dw = new Float64Array(k * m);
    const db = new Float64Array(m);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < m; j++) db[j] += dz[i * m + j];
      for (let p = 0; p < k; p++) {
        const v = a[i * k + p];
        if (v === 0) continue;
        const wr = p * m;
        for (let j = 0; j < m; j++) dw[wr + j] += v * dz[i * m + j];
      }
    }
    grads.unshift(...(layer.useBias ? [dw, db] : [dw]));
    if (l > 0) {
      const prev = new Float64Array(n * k);
      const zPrev = pre[l - 1];
      const w = layer.kernel;
      for (let i = 0; i < n; i++) {
        for (let p = 0; p < k; p++) {
          if (dense[l - 1].activation === 'relu' && zPrev[i * k + p] <= 0) continue;
          let s = 0;
          const wr = p * m;
          for (let j = 0; j < m; j++) s += dz[i * m + j] * w[wr + j];
          prev[i * k + p] = s;
        }
      }
      dz = prev;
    }
  }
  return { grads: grads.map((g) => Float32Array.from(g)), loss };
}

module.exports = { parseModel, bindWeights, weightedGradient };
