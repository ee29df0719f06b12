"""Land-cover labels as geodata: points, polygons or a land-cover raster over scenes -> labelled chips.

The probe's unit is a labelled image patch; field data comes as geometries in some CRS, over scenes
in others. This package turns one into the other and writes an auditable table of what it did:

- :mod:`geossl.labels.layers`: read a vector layer (any OGR format, or GeoParquet), check its label
  field and geometry types;
- :mod:`geossl.labels.catalog`: the scenes' read grids (in the encoder's bands and GSD);
- :mod:`geossl.labels.placement`: candidate chip windows for points, polygons and label rasters;
- :mod:`geossl.labels.split`: random (grouped, stratified), by a ``split`` column, or spatial blocks;
- :mod:`geossl.labels.chips`: cut the chips through the one raster layer and write them with their table.

``geossl probe --labels/--label-raster --scenes`` drives it; :func:`geossl.labels.chips.build_label_chips`
is the Python entry point.
"""
