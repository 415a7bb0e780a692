"""NNCodec 2.1.3 (Fraunhofer's MPEG NNR / DeepCABAC codec) as a rate-distortion peer.

NNCodec pins numpy<2 and builds its own C++ extension, so it lives in a separate environment
(``bench/setup_nncodec_env.sh`` makes ``.venv-nncodec``) and runs here in a subprocess:
:func:`run_nncodec_sweep` hands it real float32 tensors, lets NNCodec quantize and code them at
each quantization parameter (qp) of a sweep with its own quantizer, and returns the real
bitstream sizes, the timings and the decoded tensors.

What NNCodec does (read from its source, ``nncodec/nnc/compression.py``,
``nncodec/nnc_core/approximator`` and the C++ in ``extensions/deepCABAC/source``, and checked
by experiment):

qp and step size
    ``qp_density`` (default 2, so ``k = 2**qp_density = 4`` steps per octave) fixes the grid:
    ``step = (k + (qp mod k)) * 2**(floor(qp / k) - qp_density)``, i.e. ``qp = 4 e + m`` gives
    ``step = (1 + m / 4) * 2**e``: a power of two at multiples of 4, linear in between.
    ``qp = -38`` (the default) is ``step = 1.5 * 2**-10 = 0.00146``; qp + 4 doubles the step.
    Decoding is ``value = step * integer`` (float32) in both modes.

Uniform quantization (``use_dq=False``)
    Plain rounding to the nearest multiple of ``step`` (``lambda_scale=0``, the default, turns
    the rate term of the encoder's rate-distortion rounding off), so the error is at most
    ``step / 2``.

Dependent ("trellis-coded") quantization (``use_dq=True``, the default)
    An 8-state trellis picks, per weight, one of two quantizers that each have spacing
    ``2 * step`` (one holds the even multiples of ``step``, the other the odd ones and zero),
    minimising the squared error over the whole tensor (with ``lambda_scale=0`` the trellis
    ignores the rate). The decoded values still lie on the ``step`` grid, but a weight can end
    up almost two steps away (the trellis only considers the four multiples of ``step`` nearest
    each weight, and zero, so the error stays below ``2 step``): we measured maximum errors of
    1.5 to 1.98 ``step`` on Gaussian and MiniLM matrices. Since each quantizer is twice as
    coarse, DQ at qp costs about as many bits as uniform quantization at qp + 4 (1 bit per
    weight less than uniform at the same qp); at equal rate its squared error is 0.8 dB (at 2
    bits per weight) to 1.1 dB (at 7) lower, measured on MiniLM's matrices.

Which tensors are quantized, and how
    For a plain dict NNCodec guesses the parameter type from the shape: tensors with two or more
    dimensions are ``"weight"`` and use ``qp``; 0-d and 1-d tensors (biases, LayerNorm weights
    and biases) are ``"unspecified"`` and use ``nonweight_qp``, default ``-75``, i.e.
    ``step = 1.25 * 2**-19 = 2.4e-6`` whatever ``qp`` is, with the same DQ setting as the
    weights. So 1-d tensors are *not* coded losslessly but quantized very finely: on
    all-MiniLM-L6-v2 they cost about 17 bits per value (66 kB for 31 k values), with errors up
    to ``step / 2 = 1.2e-6`` (uniform) or ``1.8 step = 4.2e-6`` (DQ); only the one all-zero
    tensor of the 63 decoded bit-exactly (a value comes back exactly only when it happens to
    lie on the grid). (Without ``nonweight_qp`` they would use ``qp - 8``, a quarter of the
    weight step.) int32 tensors are coded losslessly ("skip"); any other dtype is
    refused, so :func:`run_nncodec_sweep` accepts float32 only. ``nnc.compress`` fails on 0-d
    arrays (IndexError), so the sweep passes them as shape ``(1,)`` and restores the shapes.

Defaults of ``nnc.compress`` and what they do without data
    ``qp=-38``, ``qp_density=2``, ``nonweight_qp=-75``, ``use_dq=True``, ``lambda_scale=0``
    (no rate term in quantization), ``scan_order=0`` (row-major, no block scan),
    ``cabac_unary_length_minus1=10``, ``codebook_mode=0`` (uniform grid, no codebook).
    ``param_opt=True`` is data-free: the encoder codes every tensor once more in a dry run
    with several initial context-model states and adaptation-window sizes and signals the best
    (encoder time only; it makes the file smaller). ``opt_qp=False``: when on, a data-free
    heuristic scales each weight tensor's qp by its share of the model's size and its spread;
    it stays off. ``ioq``, ``lsa``, ``fine_tune``, ``bnf`` need a model and data (a
    ``model_executer``) and are off by default; ``row_skipping`` and ``tca`` (temporal context
    adaptation, for incremental updates) are off.

Arguments used here
    ``nnc.compress(tensors, bitstream_path=..., qp=qp, use_dq=use_dq)`` on a plain dict of
    float32 numpy arrays, with every other argument at its default: no default had to change
    to run data-free, since none of the data-dependent tools is on by default.
    ``verbose=False`` is also the default of ``nnc.compress`` (unlike ``compress_model``).
    ``nnc.decompress(path)`` returns the dict of decoded float32 arrays.

Tensor names
    NNCodec takes names ending in ``_G`` or ``_H`` for the low-rank factors of another tensor
    and asserts on names that contain them elsewhere, so such names are passed to it as
    ``tensor{i}`` instead; the decoded files always use the original names.

Default sweep
    :data:`DEFAULT_QPS`, ``-42`` to ``-22`` in steps of 4, covers 2 to 7 bits per weight with
    DQ on transformer matrices of RMS 0.04: measured on the 36 encoder matrices of
    all-MiniLM-L6-v2, each scaled to RMS 0.04, it gives 6.9, 5.9, 4.9, 3.9, 3.0 and 2.1 bits per
    weight. :func:`suggest_qps` shifts it for other RMS values and for uniform quantization.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np

from nncodec_rd.decode_speed import TORCHVISION_STUB, find_nncodec_python

DEFAULT_QPS = [-42, -38, -34, -30, -26, -22]
"""qp sweep of about 7 down to 2 bits per weight, DQ, weight RMS 0.04 (see :func:`suggest_qps`)."""

# RMS of the matrices that DEFAULT_QPS was measured for.
_REFERENCE_RMS = 0.04

# Marks the result lines of the subprocess: NNCodec itself may print INFO lines to stdout.
_RESULT_PREFIX = "NNCODEC_PEER_RESULT "

_SWEEP_SCRIPT = r'''
import json, os, sys, time, zipfile
import numpy as np
''' + TORCHVISION_STUB + r'''


def save_npz(path, arrays):
    # np.savez(path, **arrays) fails on names such as "file"; this writes the same format.
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


with open(sys.argv[1], encoding="utf-8") as stream:
    config = json.load(stream)
with np.load(config["input"]) as source:
    tensors = {coded: source[key] for key, coded in zip(config["keys"], config["coded_names"])}
shapes = dict(zip(config["coded_names"], config["shapes"]))
for qp in config["qps"]:
    bitstream = os.path.join(config["folder"], f"nncodec_qp{qp}.nnc")
    start = time.perf_counter()
    nnc.compress(tensors, bitstream_path=bitstream, qp=qp, use_dq=config["use_dq"])
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    decoded = nnc.decompress(bitstream)
    decode_seconds = time.perf_counter() - start
    decoded_path = os.path.join(config["folder"], f"nncodec_qp{qp}.npz")
    save_npz(decoded_path, {
        name: np.asarray(decoded[coded], dtype=np.float32).reshape(tuple(shapes[coded]))
        for name, coded in zip(config["names"], config["coded_names"])})
    print(config["prefix"] + json.dumps({
        "qp": qp, "bitstream_path": bitstream, "encode_seconds": encode_seconds,
        "decode_seconds": decode_seconds, "decoded_path": decoded_path}), flush=True)
'''


def suggest_qps(rms: float | dict[str, np.ndarray] = _REFERENCE_RMS, *,
                use_dq: bool = True) -> list[int]:
    """A qp sweep of about 7 down to 2 bits per weight for weight matrices of a given RMS.

    For a given distribution shape the rate depends only on ``rms / step``, and qp + 4
    doubles the step, so :data:`DEFAULT_QPS` (measured with DQ at RMS 0.04) moves by
    ``4 * log2(rms / 0.04)``, rounded. Uniform quantization at qp + 4 costs about as much as DQ
    at qp (each of DQ's two quantizers has twice the step), so without DQ the sweep moves up
    by 4. For all-MiniLM-L6-v2 (RMS 0.058) this gives -40 to -20, measured 7.0 to 2.2 bits per
    weight.

    Parameters
    ----------
    rms : float or dict of str to numpy.ndarray
        Root mean square of the weight matrices, or the tensors themselves: then the RMS over
        all their elements in tensors of two or more dimensions (the ones ``qp`` applies to).
    use_dq : bool
        Whether the sweep is for NNCodec's dependent quantization (its default).

    Returns
    -------
    list of int
        qp values, finest (most bits) first.
    """
    if isinstance(rms, dict):
        matrices = [array for array in rms.values() if np.ndim(array) >= 2]
        count = sum(np.size(array) for array in matrices)
        if count == 0:
            raise ValueError("no tensor of two or more dimensions to take the RMS of")
        squares = sum(float(np.square(np.asarray(array, dtype=np.float64)).sum())
                      for array in matrices)
        rms = float(np.sqrt(squares / count))
    if not rms > 0:
        raise ValueError(f"rms must be positive, not {rms!r}")
    shift = int(round(4 * np.log2(rms / _REFERENCE_RMS))) + (0 if use_dq else 4)
    return [qp + shift for qp in DEFAULT_QPS]


def _name_for_nncodec(name: str, index: int) -> str:
    # NNCodec reads the suffixes _G/_H as low-rank factors of another tensor and asserts on
    # names that contain them elsewhere.
    return f"tensor{index}" if ("_G" in name or "_H" in name) else name


def run_nncodec_sweep(tensors: dict[str, np.ndarray], qps: list[int], folder: str, *,
                      python: str | None = None, use_dq: bool = True,
                      progress=None) -> list[dict]:
    """Code ``tensors`` with NNCodec at each qp and decode them again, in its own environment.

    One subprocess imports NNCodec once and, for each qp, runs ``nnc.compress`` on the whole
    dict (NNCodec's own quantization, its defaults otherwise; see the module docstring), writes
    the bitstream to ``folder/nncodec_qp{qp}.nnc``, then ``nnc.decompress`` and saves the
    decoded tensors to ``folder/nncodec_qp{qp}.npz``.

    Parameters
    ----------
    tensors : dict of str to numpy.ndarray
        float32 tensors. Those with two or more dimensions are quantized with ``qp``; NNCodec
        quantizes 0-d and 1-d ones very finely (``nonweight_qp=-75``, not losslessly).
    qps : list of int
        Quantization parameters; ``step = 2**(qp / 4)`` at multiples of 4 (see the module
        docstring), e.g. :data:`DEFAULT_QPS` or :func:`suggest_qps`.
    folder : str
        Existing folder for the input, the bitstreams and the decoded tensors.
    python : str or None
        Interpreter of the NNCodec environment; found with :func:`find_nncodec_python` if None.
    use_dq : bool
        NNCodec's dependent (trellis-coded) quantization, its default; False rounds uniformly.
    progress : callable or None
        Called with a one-line summary per qp as the results arrive.

    Returns
    -------
    list of dict
        One per qp, in the order of ``qps``: ``qp``; ``bytes``, the size of the bitstream file;
        ``encode_seconds`` (quantization and coding) and ``decode_seconds`` (decoding and
        reconstruction, from the file), wall-clock in one thread; ``decoded_path``, an .npz of
        the decoded float32 tensors under their original names and shapes; ``use_dq``; and
        ``bitstream_path``.

    Raises
    ------
    FileNotFoundError
        If there is no NNCodec environment.
    ValueError
        If a tensor is not float32, or ``qps`` is empty.
    RuntimeError
        If NNCodec fails; the message is the last line it wrote to stderr.
    """
    python = find_nncodec_python(python)
    if python is None or shutil.which(python) is None:
        where = f" ({python} is not an executable)" if python else ""
        raise FileNotFoundError(f"no NNCodec environment{where}: run bench/setup_nncodec_env.sh "
                                "(or pass python=PATH to an environment with nncodec 2.1.3)")
    qps = [int(qp) for qp in qps]
    if not qps:
        raise ValueError("qps is empty")
    arrays = {name: np.asarray(array) for name, array in tensors.items()}
    refused = [name for name, array in arrays.items() if array.dtype != np.float32]
    if refused:
        raise ValueError(f"NNCodec peer takes float32 tensors only; not float32: {refused[:5]}")
    names = list(arrays)
    folder = os.path.abspath(folder)
    input_path = os.path.join(folder, "nncodec_input.npz")
    # Positional keys: tensor names may be anything, np.savez keywords may not.
    keys = [f"t{index}" for index in range(len(names))]
    # nnc.compress fails on 0-d arrays (it indexes shape[0]); the decoded shapes are restored.
    np.savez(input_path, **{key: arrays[name].reshape(arrays[name].shape or (1,))
                            for key, name in zip(keys, names)})
    config = {"input": input_path, "folder": folder, "qps": qps, "use_dq": bool(use_dq),
              "prefix": _RESULT_PREFIX, "keys": keys, "names": names,
              "coded_names": [_name_for_nncodec(name, i) for i, name in enumerate(names)],
              "shapes": [list(arrays[name].shape) for name in names]}
    config_path = os.path.join(folder, "nncodec_sweep.json")
    script_path = os.path.join(folder, "nncodec_sweep.py")
    with open(config_path, "w", encoding="utf-8") as stream:
        json.dump(config, stream)
    with open(script_path, "w", encoding="utf-8") as stream:
        stream.write(_SWEEP_SCRIPT)
    weight_count = sum(array.size for array in arrays.values())
    results = []
    # stderr goes to a file: a pipe nobody reads while stdout streams could fill and block.
    stderr_path = os.path.join(folder, "nncodec_stderr.txt")
    with open(stderr_path, "w+", encoding="utf-8") as stderr:
        process = subprocess.Popen([python, script_path, config_path], cwd=folder, text=True,
                                   stdout=subprocess.PIPE, stderr=stderr)
        try:
            with process.stdout:
                for line in process.stdout:
                    if not line.startswith(_RESULT_PREFIX):
                        continue
                    measured = json.loads(line[len(_RESULT_PREFIX):])
                    size = os.path.getsize(measured["bitstream_path"])
                    result = {"qp": measured["qp"], "bytes": size,
                              "encode_seconds": measured["encode_seconds"],
                              "decode_seconds": measured["decode_seconds"],
                              "decoded_path": measured["decoded_path"], "use_dq": bool(use_dq),
                              "bitstream_path": measured["bitstream_path"]}
                    results.append(result)
                    if progress is not None:
                        progress(f"NNCodec qp {result['qp']}{' DQ' if use_dq else ''}: "
                                 f"{size:,} bytes, "
                                 f"{8 * size / max(weight_count, 1):.3f} bits/weight, "
                                 f"encode {result['encode_seconds']:.2f} s, "
                                 f"decode {result['decode_seconds']:.2f} s")
        except BaseException:
            # A failing progress callback or Ctrl-C must not leave NNCodec running on.
            process.kill()
            process.wait()
            raise
        returncode = process.wait()
        stderr.seek(0)
        error_lines = [line.strip() for line in stderr.read().splitlines() if line.strip()]
    if returncode != 0 or len(results) != len(qps):
        last = error_lines[-1] if error_lines else f"exit status {returncode}, no message"
        raise RuntimeError(f"NNCodec run failed: {last}")
    return results
