"""scanpipe's inference engine: nnU-Net v2's predictor on ONNX Runtime and numpy.

It reproduces what ``nnUNetPredictor`` does to one scan, step by step, with
no torch in the process:

* :mod:`.plans` reads ``plans.json`` and ``dataset.json``;
* :mod:`.preprocessing` transposes, crops, normalises and resamples
  (:mod:`.resampling`);
* :mod:`.sliding_window` runs the network over Gaussian-weighted patches,
  with test-time mirroring;
* :mod:`.restore` resamples the logits back and builds the mask;
* :mod:`.session` holds the ONNX Runtime session;
* :mod:`.segmenter` ties them into :class:`OnnxSegmenter`.

The folder it runs is written by :func:`scanpipe.models.export.export_model`.
"""

from scanpipe.models.engine.segmenter import OnnxSegmenter

__all__ = ["OnnxSegmenter"]
