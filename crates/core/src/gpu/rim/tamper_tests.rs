//! Hostile RIMs: tampered signed content, moved or extra signatures, DTDs, entities, deep
//! nesting, oversized input, wrong algorithms; each a named error, none a panic.
