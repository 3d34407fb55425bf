//! Reading an upstream response body off its connection, by the framing its head declared, a
//! piece at a time as the client's side asks for it (so backpressure reaches the model server).

use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::SizeHint;

use super::chunked::{Decoded, Decoder};
use super::response::Framing;
use super::{Conn, Error};

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Decoder),
    UntilClose,
    Done,
}

/// Where a response body is in its framing; the connection is passed in on each poll.
#[derive(Debug)]
pub struct Reader {
    state: State,
}

impl Reader {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Decoder::default()),
            Framing::UntilClose => State::UntilClose,
        };
        Reader { state }
    }

    /// The body has ended; whatever is left in the connection belongs to no response.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }

    /// The next piece of the body, reading from `conn` only when nothing is buffered. The
    /// piece that completes the body leaves the reader done in the same call, so the
    /// connection can go back to the pool before anyone asks again.
    pub fn poll_data(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        loop {
            match &mut self.state {
                State::Done => return Poll::Ready(Ok(None)),
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let take = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        // `take` is at most `left`, so it fits.
                        *left -= take as u64;
                        if *left == 0 {
                            self.state = State::Done;
                        }
                        return Poll::Ready(Ok(Some(conn.buf.split_to(take).freeze())));
                    }
                }
                State::Chunked(decoder) => match decoder.decode(&mut conn.buf)? {
                    Decoded::Data(data) => {
                        // The end of the last chunk may already be buffered: say so now. An
                        // error there comes back on the next call.
                        if let Ok(true) = decoder.skip_framing(&mut conn.buf) {
                            self.state = State::Done;
                        }
                        return Poll::Ready(Ok(Some(data)));
                    }
                    Decoded::Done => {
                        self.state = State::Done;
                        return Poll::Ready(Ok(None));
                    }
                    Decoded::NeedMore => {}
                },
                State::UntilClose => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Ok(Some(conn.buf.split().freeze())));
                    }
                }
            }
            let n = ready!(conn.poll_read(cx)).map_err(Error::Read)?;
            if n == 0 {
                if let State::UntilClose = self.state {
                    self.state = State::Done;
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(Error::Truncated));
            }
        }
    }
}
