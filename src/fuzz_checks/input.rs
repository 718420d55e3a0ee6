//! Splitting one fuzz input into fields.
//!
//! Every target reads its input with these few rules (a byte, a length-
//! prefixed slice, the rest) so the layouts stay simple to write by hand for
//! seeds and to read back from a crash file. Running out of bytes is never an
//! error: a short read yields what is left, so every input means something.

/// The unread part of a fuzz input.
pub(super) struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    /// The next byte, if any.
    pub(super) fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    /// Up to `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    /// A slice whose length is given by the next byte.
    pub(super) fn prefixed8(&mut self) -> &'a [u8] {
        let n = self.byte().map_or(0, usize::from);
        self.take(n)
    }

    /// A slice whose length is given by the next two bytes, big-endian.
    pub(super) fn prefixed16(&mut self) -> &'a [u8] {
        let hi = self.byte().map_or(0, usize::from);
        let lo = self.byte().map_or(0, usize::from);
        self.take(hi << 8 | lo)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Everything not read yet.
    pub(super) fn rest(self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_yield_what_is_left() {
        let mut input = Input::new(&[7, 3, b'a', b'b', 0, 9, b'x']);
        assert_eq!(input.byte(), Some(7));
        assert_eq!(input.prefixed8(), b"ab\0");
        assert_eq!(input.prefixed16(), b"");
        assert!(input.is_empty());
        assert_eq!(input.byte(), None);
        assert_eq!(Input::new(&[0, 2, b'h', b'i', b'!']).prefixed16(), b"hi");
    }
}
