//! placeholder until the phantom lands
