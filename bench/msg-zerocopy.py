# MSG_ZEROCOPY vs plain send over loopback TCP: 1 MiB sends, receiver drains.
import socket, threading, time, sys, os
SO_ZEROCOPY=60; MSG_ZEROCOPY=0x4000000
mode=sys.argv[1]; total=int(sys.argv[2])<<30
buf=bytearray(os.urandom(1<<20))
l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(1)
def sink():
    c,_=l.accept(); b=bytearray(1<<20); m=memoryview(b)
    while c.recv_into(m): pass
t=threading.Thread(target=sink); t.start()
s=socket.create_connection(l.getsockname())
flags=0
if mode=='zc':
    s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1); flags=MSG_ZEROCOPY
sent=0; t0=time.time(); c0=os.times()
while sent<total:
    n=s.send(buf, flags); sent+=n
    if mode=='zc' and sent % (64<<20) < n:
        # reap completions so the error queue does not fill
        try:
            while True: s.recvmsg(0, 1024, socket.MSG_ERRQUEUE|socket.MSG_DONTWAIT)
        except BlockingIOError: pass
s.close(); t.join(); c1=os.times()
print(mode, f"{total/(time.time()-t0)/2**20:.0f} MiB/s cpu {(c1.user+c1.system-c0.user-c0.system):.2f}s")
