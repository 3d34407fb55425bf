//! The TD quote (v4 and v5): strict parsing by declared lengths, decoded fields.
