package latest

import "testing"

func TestSendReplaces(t *testing.T) {
	ch := make(chan int, 1)
	for i := range 5 {
		Send(ch, i) // never blocks though nobody receives
	}
	if got := <-ch; got != 4 {
		t.Errorf("received %d, want the newest, 4", got)
	}
}

func TestDrain(t *testing.T) {
	ch := make(chan int, 3)
	ch <- 1
	ch <- 2
	if v, ok := Drain(ch, 0); v != 2 || !ok {
		t.Errorf("Drain = %d, %t; want 2, true", v, ok)
	}
	if v, ok := Drain(ch, 7); v != 7 || !ok {
		t.Errorf("Drain of an empty channel = %d, %t; want 7, true", v, ok)
	}
	ch <- 3
	close(ch)
	if v, ok := Drain(ch, 0); v != 3 || ok {
		t.Errorf("Drain of a closed channel = %d, %t; want 3, false", v, ok)
	}
}
