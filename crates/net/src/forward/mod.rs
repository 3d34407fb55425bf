//! What the server's front door and the `connect` client share when forwarding OpenAI API
//! traffic: hop-by-hop header handling and errors in OpenAI's shape.

pub mod headers;
pub mod openai_error;
