"""Sources -> tiles: scenes (random and grid tiles), labelled patches, band statistics, storage URIs."""
