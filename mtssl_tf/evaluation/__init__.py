"""Transfer evaluations: frozen linear, Faster R-CNN on VOC07, NYU depth, supervised baseline."""
