"""A scene as a model sees it: between the data (:mod:`geossl.data`) and the models (:mod:`geossl.models`)
on one side and whatever runs a model on scenes (prediction, label chips, probes) on the other.

Here a raster becomes the model's input: its bands chosen and put in the model's order
(:func:`geossl.scene.bands.resolve_bands`), resampled on the fly to the model's ground sample distance,
optionally rescaled onto the model's units (:mod:`geossl.scene.rescale`), checked against the statistics
of the model's training data (:func:`geossl.scene.bands.check_statistics`), its invalid pixels filled
with the model's means, and read window by window (:class:`geossl.scene.reader.ModelSceneReader`) inside
the one GDAL environment the caller opens for the scene (:func:`geossl.data.raster.raster_env`).

Layering: this package may import :mod:`geossl.data`, :mod:`geossl.models` and the foundation modules
(``io``, ``settings``, ``choices``, ``devices``), never ``predict``, ``labels``, ``probe``, ``dino``,
``finetune`` or ``cloud``, which all build on it.
"""
