// The one preprocessing function of edgetl's JavaScript side, shared by the app and the parity
// harness, so the browser feeds a model exactly what Python fed it when the probes were made.
//
// It follows the bundle's input contract (manifest.json "input"):
//   size        resize the whole image to (height, width), no crop
//   resize      "bilinear" with half-pixel centers and no antialias, i.e. the same as
//               tf.image.resize(antialias=False) and edgetl.data.resize_bilinear in Python
//   range       pixel values 0..255 as float32 (scaling to the backbone's range is inside the
//               model); another value_range [lo, hi] is mapped linearly from 0..255
//   channels    RGB order (BGR reversed if a contract ever says so), alpha dropped; a 1-channel
//               contract (channel_order "gray") takes gray = w . (R, G, B) with its gray_weights
//               (ITU-R BT.601 luma 0.299/0.587/0.114, as edgetl.data.to_channels in Python)
//   layout      NHWC (NCHW transposed if the contract says so)
//
// Usage: preprocess(source, contract[, tf]) -> tf.Tensor4D of shape [N, H, W, C] (or NCHW), C the
// contract's channels (3, or 1 for a grayscale model).
// `source` is an HTMLImageElement, HTMLVideoElement, HTMLCanvasElement, ImageBitmap, ImageData,
// or a tf.Tensor of raw RGB values 0..255 (rank 3 HWC or rank 4 NHWC).

/** Check a manifest "input" entry and fill defaults; throws a readable Error when unusable. */
export function checkContract(contract) {
  if (!contract || typeof contract !== 'object') {
    throw new Error('the manifest has no "input" contract');
  }
  const height = Number(contract.height);
  const width = Number(contract.width);
  if (!(Number.isInteger(height) && height > 0 && Number.isInteger(width) && width > 0)) {
    throw new Error(`the input contract has no valid size (height=${contract.height}, ` +
                    `width=${contract.width})`);
  }
  const out = {
    height,
    width,
    channels: contract.channels ?? 3,
    dtype: contract.dtype ?? 'float32',
    value_range: contract.value_range ?? [0, 255],
    layout: contract.layout ?? 'NHWC',
    channel_order: contract.channel_order ?? 'RGB',
    resize_method: contract.resize_method ?? 'bilinear',
    gray_weights: contract.gray_weights ?? null,
  };
  if (out.channels === 1) {
    const g = out.gray_weights;
    if (out.channel_order !== 'gray' || !Array.isArray(g) || g.length !== 3) {
      throw new Error('a 1-channel input contract needs channel_order "gray" and 3 gray_weights');
    }
  } else if (out.channels !== 3) {
    throw new Error(`the input contract wants ${out.channels} channels; edgetl models take 3 ` +
                    '(RGB) or 1 (gray)');
  }
  if (out.dtype !== 'float32') throw new Error(`unsupported input dtype ${out.dtype}`);
  if (out.resize_method !== 'bilinear') {
    throw new Error(`unsupported resize method "${out.resize_method}" (only bilinear)`);
  }
  if (!['RGB', 'BGR', 'gray'].includes(out.channel_order)) {
    throw new Error(`unsupported channel order "${out.channel_order}"`);
  }
  if (!['NHWC', 'NCHW'].includes(out.layout)) throw new Error(`unsupported layout ${out.layout}`);
  if (!Array.isArray(out.value_range) || out.value_range.length !== 2) {
    throw new Error('the input contract value_range must be [low, high]');
  }
  return out;
}

/** Decode an image file the way Python's edgetl.data.read_rgb does: EXIF orientation applied,
 * no colour-space conversion, transparent pixels composited on white. Returns ImageData. */
export async function decodeImage(blob) {
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: 'none',
    premultiplyAlpha: 'none',
    imageOrientation: 'from-image',
  });
  try {
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d', {colorSpace: 'srgb', willReadFrequently: true});
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(0, 0, bitmap.width, bitmap.height);
    ctx.drawImage(bitmap, 0, 0);
    return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  } finally {
    bitmap.close();
  }
}

/** The model input for `source`, per the contract; the caller disposes the returned tensor. */
export function preprocess(source, contract, tf = globalThis.tf) {
  const c = checkContract(contract);
  return tf.tidy(() => {
    let x = source instanceof tf.Tensor ? source : tf.browser.fromPixels(source, 3);
    if (x.rank === 3) x = x.expandDims(0);
    if (x.rank !== 4 || x.shape[3] !== 3) {
      throw new Error(`expected an RGB image, got a tensor of shape [${x.shape}]`);
    }
    x = x.toFloat();
    if (x.shape[1] !== c.height || x.shape[2] !== c.width) {
      // alignCorners=false, halfPixelCenters=true: TF2's tf.image.resize(antialias=False).
      x = tf.image.resizeBilinear(x, [c.height, c.width], false, true);
    }
    const [lo, hi] = c.value_range.map(Number);
    if (lo !== 0 || hi !== 255) x = x.mul((hi - lo) / 255).add(lo);
    if (c.channel_order === 'BGR') x = x.reverse(3);
    if (c.channels === 1) x = x.mul(tf.tensor1d(c.gray_weights.map(Number))).sum(3, true);
    if (c.layout === 'NCHW') x = x.transpose([0, 3, 1, 2]);
    return x;
  });
}
