//! Collateral from a PCCS (v4 API), cached on disk and refreshed before it expires.
