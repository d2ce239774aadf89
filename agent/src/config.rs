//! The agent's TOML config, two-stage: raw parse, then a validated `Config`.
//! OWNED BY THE DELIVERY WORK.
