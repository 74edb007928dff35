"""Images: a procedural medical-style data set, a PNG/DICOM folder reader, class-conditional
diffusion (train, sample, evaluate). Records follow `generators.image.records.IMAGE_SCHEMA`."""
