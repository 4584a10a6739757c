//! docs/protocol.md examples decode with the real protocol types (under construction).
