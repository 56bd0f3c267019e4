//! A minimal Server-Sent Events reader for `GET /v1/watch` and
//! `POST /v1/watch`.

use futures::StreamExt;
use futures::stream::BoxStream;
use muster_types::{QueryEvent, WatchEvent};

use crate::error::{Error, Result};

/// One parsed event: its `id:` (the index) and the decoded data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub id: Option<u64>,
    pub event: WatchEvent,
}

/// Splits a byte stream into SSE frames. Comments (keep-alives) yield
/// nothing but still prove the connection alive.
pub(crate) struct SseReader {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    ended: bool,
}

/// What one read produced.
pub(crate) enum Read {
    /// A complete event.
    Event(Box<Frame>),
    /// A keep-alive or other event-less frame.
    KeepAlive,
    /// The server closed the stream.
    End,
}

/// What one read of a multiplexed watch produced.
pub(crate) enum QueryRead {
    /// A complete event, with its query id.
    Event(Box<QueryEvent>),
    /// A keep-alive or other event-less frame.
    KeepAlive,
    /// The server closed the stream.
    End,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        SseReader {
            body: resp.bytes_stream().boxed(),
            buf: Vec::new(),
            ended: false,
        }
    }

    /// Reads until one frame is complete.
    pub async fn next(&mut self) -> Result<Read> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf) {
                return parse_frame(&frame);
            }
            self.fill().await?;
            if self.ended {
                return Ok(Read::End);
            }
        }
    }

    /// Reads until one frame of a multiplexed watch is complete.
    pub async fn next_query_event(&mut self) -> Result<QueryRead> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf) {
                let Some((_, data)) = frame_data(&frame) else {
                    return Ok(QueryRead::KeepAlive);
                };
                let event = serde_json::from_str(&data).map_err(|e| Error::UnreadableEvent {
                    data: data.clone(),
                    reason: e.to_string(),
                })?;
                return Ok(QueryRead::Event(Box::new(event)));
            }
            self.fill().await?;
            if self.ended {
                return Ok(QueryRead::End);
            }
        }
    }

    /// Appends the next chunk of the body to the buffer.
    async fn fill(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        match self.body.next().await {
            Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(Error::Protocol(format!("watch stream broke: {e}"))),
            None => self.ended = true,
        }
        Ok(())
    }
}

/// Removes one `\n\n`-terminated frame from the front of `buf`.
fn take_frame(buf: &mut Vec<u8>) -> Option<String> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let frame: Vec<u8> = buf.drain(..end + 2).collect();
    Some(String::from_utf8_lossy(&frame).into_owned())
}

fn parse_frame(frame: &str) -> Result<Read> {
    let Some((id, data)) = frame_data(frame) else {
        return Ok(Read::KeepAlive);
    };
    let event: WatchEvent = serde_json::from_str(&data).map_err(|e| Error::UnreadableEvent {
        data: data.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Read::Event(Box::new(Frame { id, event })))
}

/// A frame's `id:` and its `data:` lines joined; `None` for a frame without
/// data (a keep-alive comment).
fn frame_data(frame: &str) -> Option<(Option<u64>, String)> {
    let (mut id, mut data, mut has_data) = (None, String::new(), false);
    for line in frame.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("data:") {
            if has_data {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
            has_data = true;
        }
    }
    has_data.then_some((id, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_and_keepalives() {
        let mut buf = b": keep-alive\n\nevent: delete\nid: 7\ndata: {\"type\":\"delete\",".to_vec();
        let f = take_frame(&mut buf).unwrap();
        assert!(matches!(parse_frame(&f).unwrap(), Read::KeepAlive));
        assert!(take_frame(&mut buf).is_none());
        buf.extend_from_slice(b"\"index\":7,\"id\":\"a\"}\n\n");
        let f = take_frame(&mut buf).unwrap();
        let Read::Event(frame) = parse_frame(&f).unwrap() else {
            panic!("an event")
        };
        assert_eq!(frame.id, Some(7));
        assert_eq!(
            frame.event,
            WatchEvent::Delete {
                index: 7,
                id: "a".into()
            }
        );
        assert!(buf.is_empty());
    }
}
