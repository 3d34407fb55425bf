//! Small shared encodings: lowercase hex for digests, standard base64 for blobs.
