//! placeholder: provider plugin under construction
