// Checks exported models against their parity files with ONNX Runtime
// (onnxruntime-node), for machines whose Python has no onnxruntime.
//
//   NODE_PATH=/path/to/node_modules node train/tools/ort_parity.js models/<name> [...]
//
// Prints the max |ORT - PyTorch| per model (batch N and batch 1) and exits 1
// if any exceeds the tolerance in parity.json (default 1e-4).
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

function readF32(file) {
  const b = fs.readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

async function check(dir) {
  const info = JSON.parse(fs.readFileSync(path.join(dir, 'parity.json'), 'utf8'));
  const x = readF32(path.join(dir, 'parity_input.bin'));
  const want = readF32(path.join(dir, 'parity_output.bin'));
  const sess = await ort.InferenceSession.create(path.join(dir, 'model.onnx'), { intraOpNumThreads: 2 });
  const t0 = Date.now();
  const out = await sess.run({ [info.input_name]: new ort.Tensor('float32', x, info.input_shape) });
  const ms = Date.now() - t0;
  const got = out[info.output_name].data;
  let max = 0;
  for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(got[i] - want[i]));
  const per = want.length / info.output_shape[0];
  const one = await sess.run({ [info.input_name]: new ort.Tensor('float32', x.slice(0, x.length / info.input_shape[0]), [1, ...info.input_shape.slice(1)]) });
  let max1 = 0;
  for (let i = 0; i < per; i++) max1 = Math.max(max1, Math.abs(one[info.output_name].data[i] - want[i]));
  const tol = info.tolerance || 1e-4;
  const ok = max <= tol && max1 <= tol;
  console.log(`${path.basename(dir)}: max_abs_diff=${max.toExponential(3)} batch1=${max1.toExponential(3)} run_ms(batch ${info.input_shape[0]})=${ms} ${ok ? 'ok' : 'FAIL'}`);
  return ok;
}

(async () => {
  let ok = true;
  for (const d of process.argv.slice(2)) ok = (await check(d)) && ok;
  process.exit(ok ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
